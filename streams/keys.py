"""Content-addressed object keys: the one place the S3 key layout is written down.

A stage's output key is a hash of everything that decides the output: the input bytes, the stage's
parameters and the code version. The same input and settings always land on the same key, so a
redelivered or replayed event finds its output already there and does no work twice.

Layout (bucket-relative)::

    uploads/<job_id>/<file name>            what `singtome submit` uploads (SINGTOME_UPLOAD_PREFIX)
    uploads/<job_id>/voice/<path>           ... the voice dataset's recordings
    uploads/<job_id>/model/<file name>      ... or a ready voice model (.pth + .index)
    stems/<digest>/<stem>.flac              separator outputs (vocals, accompaniment, ...)
    voices/<digest>/...                     trainer outputs (model.pth + .index, or profile.npz)
    converted/<digest>/vocals.flac          converter output (+ backing.flac)
    tracks/<digest>/<name>.<format>         mixer output (the cover)
    <namespace>/<digest>/manifest.json      written last beside each output: it is complete
    jobs/<job_id>/<topic>.json              the last event of each topic for the job (job state)
    jobs/<job_id>/seen/<stage>/<event_id>   the stage has seen this event (duplicate check)
    jobs/<job_id>/duplicates/<stage>/<event_id>-<nonce>  one per duplicate delivery
    locks/<namespace>-<digest>              single-flight lock of one output (conditional put)
    dlq/<topic>/<partition>-<offset>-<sha>  a DLQ copy too large for the broker (claim check)

Every output of a stage (the four content-addressed namespaces) is written by
:mod:`streams.outputs`: digest, then files, then the manifest.

Which of these an event may name is decided by :mod:`streams.keypolicy`; the normal form of a
key (:func:`key_form_problem`) is written down here, beside the layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

# The default of SINGTOME_UPLOAD_PREFIX: where a job's own uploads live.
UPLOAD_PREFIX = "uploads/{job_id}/"
JOB_ID_PLACEHOLDER = "{job_id}"
# Namespaces the pipeline writes itself, named by content digest (64 hex digits) ...
STEMS, VOICES, CONVERTED, TRACKS = "stems", "voices", "converted", "tracks"
CONTENT_ADDRESSED = (STEMS, VOICES, CONVERTED, TRACKS)
# ... and per job, or per lock.
JOBS, LOCKS = "jobs", "locks"
# Beside every content-addressed output, written last (see streams.outputs).
MANIFEST = "manifest.json"
# Under a job's upload prefix: the voice dataset's recordings and a ready voice model.
UPLOAD_VOICE, UPLOAD_MODEL = "voice/", "model/"
# Written by the runner only, never named by an event.
DLQ = "dlq"
# S3's own limit on a key.
MAX_KEY_BYTES = 1024
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def key_form_problem(key: object) -> tuple[str, str] | None:
    """Why ``key`` is not a key in normal form, as ``(code, reason)``; None when it is.

    Normal form: a non-empty bucket-relative string of at most :data:`MAX_KEY_BYTES` UTF-8 bytes,
    no leading ``/``, no scheme (``s3:``, ``file:``...), no ``.`` or ``..`` segment, no empty
    segment (a trailing ``/`` ends a prefix), no backslash, no control character. Keys that try
    to leave their place are ``forbidden_key``; keys S3 could not take as written, ``invalid_key``.
    """
    if not isinstance(key, str) or not key:
        return "invalid_key", "the key is empty or not a string"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "invalid_key", "the key is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return "invalid_key", f"the key has {size} bytes; S3 takes at most {MAX_KEY_BYTES}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "invalid_key", "the key holds a control character"
    if "\\" in key:
        return "invalid_key", "the key holds a backslash"
    if key.startswith("/"):
        return "forbidden_key", "the key starts with '/': keys are bucket-relative"
    if _SCHEME.match(key):
        return "forbidden_key", "the key names a scheme (s3:// ...): keys are bucket-relative"
    segments = key.split("/")
    if any(s in (".", "..") for s in segments):
        return "forbidden_key", "the key has a '.' or '..' segment"
    if any(not s for s in segments[:-1]):
        return "invalid_key", "the key has an empty segment ('//')"
    return None


def upload_prefix(job_id: str, pattern: str = UPLOAD_PREFIX) -> str:
    """The prefix of ``job_id``'s own uploads, from the SINGTOME_UPLOAD_PREFIX pattern."""
    return pattern.replace(JOB_ID_PLACEHOLDER, job_id)


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


def output_prefix(namespace: str, digest: str) -> str:
    """The folder of one content-addressed output: ``<namespace>/<digest>/``."""
    if namespace not in CONTENT_ADDRESSED:
        raise ValueError(f"{namespace!r} is not a content-addressed namespace")
    return f"{namespace}/{digest}/"


def output_key(namespace: str, digest: str, name: str) -> str:
    """The key of the file ``name`` of one output."""
    return output_prefix(namespace, digest) + name


def manifest_key(namespace: str, digest: str) -> str:
    """Where an output's manifest lies; its presence says every file of the output is complete."""
    return output_key(namespace, digest, MANIFEST)


def output_lock_key(namespace: str, digest: str) -> str:
    """The single-flight lock of one output: whoever holds it computes the output."""
    return lock_key(f"{namespace}-{digest}")


def stems_prefix(digest: str) -> str:
    return output_prefix(STEMS, digest)


def stem_key(digest: str, stem: str) -> str:
    return output_key(STEMS, digest, f"{stem}.flac")


def voice_prefix(digest: str) -> str:
    return output_prefix(VOICES, digest)


def voice_key(digest: str, name: str) -> str:
    return output_key(VOICES, digest, name)


def converted_key(digest: str) -> str:
    return output_key(CONVERTED, digest, "vocals.flac")


def converted_backing_key(digest: str) -> str:
    return output_key(CONVERTED, digest, "backing.flac")


def track_key(digest: str, fmt: str, name: str = "cover") -> str:
    return output_key(TRACKS, digest, f"{name}.{fmt}")


def upload_key(job_id: str, filename: str, pattern: str = UPLOAD_PREFIX) -> str:
    return upload_prefix(job_id, pattern) + Path(filename).name


def upload_dataset_prefix(job_id: str, pattern: str = UPLOAD_PREFIX) -> str:
    """Where a job's voice dataset is uploaded (its ``options.voice.dataset_key``)."""
    return upload_prefix(job_id, pattern) + UPLOAD_VOICE


def upload_dataset_key(job_id: str, relative: str, pattern: str = UPLOAD_PREFIX) -> str:
    """One recording of the dataset, at its path relative to the uploaded folder."""
    return upload_dataset_prefix(job_id, pattern) + Path(relative).as_posix()


def upload_model_key(job_id: str, filename: str, pattern: str = UPLOAD_PREFIX) -> str:
    """A ready voice model (or its index) uploaded with the job."""
    return upload_prefix(job_id, pattern) + UPLOAD_MODEL + Path(filename).name


def job_event_key(job_id: str, topic: str) -> str:
    return f"{job_prefix(job_id)}{topic}.json"


def job_prefix(job_id: str) -> str:
    return f"{JOBS}/{job_id}/"


def seen_key(job_id: str, stage: str, event_id: str) -> str:
    """Marks that ``stage`` has seen the event (written with a conditional put)."""
    return f"{job_prefix(job_id)}seen/{stage}/{event_id}"


def duplicate_key(job_id: str, stage: str, event_id: str, nonce: str) -> str:
    """One duplicate delivery of the event to ``stage``, kept for operators and tests."""
    return f"{job_prefix(job_id)}duplicates/{stage}/{event_id}-{nonce}"


def lock_key(name: str) -> str:
    return f"{LOCKS}/{name}"


def dlq_key(topic: str, partition: int | None, offset: int | None, digest: str) -> str:
    """Where the DLQ copy of a message too large for the broker is kept (claim check).

    ``topic`` is the plain topic name; partition and offset say where the message was read
    (``x`` when unknown) and the content hash keeps copies of different messages apart.
    """
    where = f"{'x' if partition is None else partition}-{'x' if offset is None else offset}"
    return f"{DLQ}/{topic}/{where}-{digest[:16]}"
