"""Content-addressed object keys: the one place the S3 key layout is written down.

A stage's output key is a hash of everything that decides the output: the input bytes, the stage's
parameters and the code version. The same input and settings always land on the same key, so a
redelivered or replayed event finds its output already there and does no work twice.

Layout (bucket-relative)::

    uploads/<job_id>/<file name>            what `singtome submit` uploads
    stems/<digest>/<stem>.flac              separator outputs (vocals, accompaniment, ...)
    voices/<digest>/...                     trainer outputs (model.pth + .index, or profile.npz)
    converted/<digest>/vocals.flac          converter output (+ backing.flac, quality.json)
    tracks/<job_id>/<name>.<format>         mixer output, one per job
    jobs/<job_id>/<topic>.json              the last event of each topic for the job (job state)
    locks/<name>                            single-writer locks (conditional put)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(params: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no whitespace: equal parameters give equal text."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def content_digest(
    inputs: Iterable[str], params: Mapping[str, Any], code_version: str, kind: str
) -> str:
    """sha256 over (kind, input hashes, parameters, code version), as 64 hex characters.

    ``inputs`` are hashes of input content (see :func:`sha256_file`); their order matters.
    """
    digest = hashlib.sha256()
    for part in (kind, *inputs, canonical_json(params), code_version):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def stems_prefix(digest: str) -> str:
    return f"stems/{digest}/"


def stem_key(digest: str, stem: str) -> str:
    return f"stems/{digest}/{stem}.flac"


def voice_prefix(digest: str) -> str:
    return f"voices/{digest}/"


def converted_key(digest: str) -> str:
    return f"converted/{digest}/vocals.flac"


def converted_backing_key(digest: str) -> str:
    return f"converted/{digest}/backing.flac"


def conversion_quality_key(digest: str) -> str:
    return f"converted/{digest}/quality.json"


def upload_key(job_id: str, filename: str) -> str:
    return f"uploads/{job_id}/{Path(filename).name}"


def track_key(job_id: str, fmt: str, name: str = "cover") -> str:
    return f"tracks/{job_id}/{name}.{fmt}"


def job_event_key(job_id: str, topic: str) -> str:
    return f"jobs/{job_id}/{topic}.json"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def lock_key(name: str) -> str:
    return f"locks/{name}"
