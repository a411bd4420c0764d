"""One way every stage writes its S3 outputs: digest → exists? → compute → upload → manifest.

A stage describes what decides its output with a typed parameters model (:class:`OutputParams`)
and plans the output with the hashes of its inputs (:func:`plan_output`): the digest
(:func:`streams.keys.content_digest` over the inputs, the parameters and the code version) names
every file the output will have. :func:`produce` then

1. answers from the store when the manifest and every file are there (and the job does not force
   recomputation): nothing is computed;
2. otherwise, optionally under a single-flight lock (a conditional put, so two workers with the
   same output compute it once), calls the stage's ``compute``, uploads every file it made, and
3. writes the manifest last: a crash between an upload and the manifest leaves an output that is
   not taken as done, and the next delivery computes it again.

The runtime knows no stage: what a file holds and what the manifest's ``info`` says is the stage's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from foundation.logging import get_logger
from streams import keys as keylayout
from streams.stage import StageContext
from streams.store import ObjectNotFound, ObjectStore, get_json, put_json

log = get_logger(__name__)

# How often a worker waiting on another's lock looks whether the output is done.
LOCK_POLL_S = 2.0


class OutputParams(BaseModel):
    """Base of a stage's parameters model: every field decides the output (with the input bytes
    and the code version), so every field is part of the digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class OutputFile:
    """One file of an output: its name under the output's prefix, and its content type."""

    name: str
    content_type: str | None = None


@dataclass(frozen=True)
class Output:
    """A planned output: its digest, the key of each of its files (by role) and its manifest."""

    namespace: str
    digest: str
    files: Mapping[str, OutputFile]
    params: Mapping[str, Any]
    code_version: str

    @property
    def keys(self) -> dict[str, str]:
        """The key of each file, by role."""
        return {
            role: keylayout.output_key(self.namespace, self.digest, file.name)
            for role, file in self.files.items()
        }

    @property
    def manifest(self) -> str:
        return keylayout.manifest_key(self.namespace, self.digest)

    @property
    def lock(self) -> str:
        return keylayout.output_lock_key(self.namespace, self.digest)


def plan_output(
    namespace: str,
    inputs: Sequence[str],
    params: OutputParams,
    code_version: str,
    files: Mapping[str, OutputFile],
) -> Output:
    """The output of ``params`` applied to the inputs whose content hashes are ``inputs``
    (in a fixed order), under ``namespace`` (one of :data:`streams.keys.CONTENT_ADDRESSED`)."""
    dumped = params.model_dump(mode="json")
    digest = keylayout.content_digest(inputs, dumped, code_version, namespace)
    keylayout.output_prefix(namespace, digest)  # refuses a namespace outside the layout
    return Output(namespace, digest, dict(files), dumped, code_version)


@dataclass(frozen=True)
class Produced:
    """What a stage's ``compute`` made: a local file for every role of the output, and the facts
    the manifest keeps about it (JSON-able) so a later delivery can answer without the files."""

    files: Mapping[str, Path]
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    """A complete output in the store: its keys, the manifest's ``info``, and whether it was
    there already (nothing computed)."""

    output: Output
    info: dict[str, Any]
    cache_hit: bool

    @property
    def keys(self) -> dict[str, str]:
        return self.output.keys


def stored_info(store: ObjectStore, output: Output) -> dict[str, Any] | None:
    """The manifest's ``info`` when the output is complete (manifest and every file stored);
    None when any part is missing."""
    if not store.exists(output.manifest):
        return None
    if not all(store.exists(key) for key in output.keys.values()):
        return None
    try:
        manifest = get_json(store, output.manifest)
    except ObjectNotFound:  # deleted between the two calls
        return None
    info = manifest.get("info") if isinstance(manifest, dict) else None
    return dict(info) if isinstance(info, dict) else None


def write_manifest(store: ObjectStore, output: Output, info: Mapping[str, Any]) -> None:
    """The manifest of a complete output: to be written only after every file is uploaded."""
    put_json(
        store,
        output.manifest,
        {
            "namespace": output.namespace,
            "digest": output.digest,
            "files": output.keys,
            "params": dict(output.params),
            "code_version": output.code_version,
            "info": dict(info),
        },
    )


def produce(
    ctx: StageContext,
    output: Output,
    compute: Callable[[], Produced],
    *,
    single_flight: bool = False,
    waiting: str = "waiting for another worker computing the same output",
) -> Stored:
    """The output, from the store when it is complete there, else computed, uploaded and its
    manifest written last.

    ``single_flight``: compute under the output's lock (``locks/<namespace>-<digest>``), so that
    concurrent jobs with the same output compute it once; a waiting worker reports ``waiting`` as
    progress and takes the stored output as soon as it is complete. A lock older than the
    stage timeout (``SINGTOME_STAGE_TIMEOUT_S``) is taken as abandoned.
    """
    if not ctx.force and (info := stored_info(ctx.store, output)) is not None:
        log.info("output reused", namespace=output.namespace, digest=output.digest[:12])
        return Stored(output, info, cache_hit=True)
    if not single_flight:
        return _compute_and_store(ctx, output, compute)

    waited_since = time.monotonic()
    while not ctx.store.put_if_absent(output.lock, _lock_owner()):
        if (info := stored_info(ctx.store, output)) is not None:
            return Stored(output, info, cache_hit=True)
        if time.monotonic() - waited_since > ctx.settings.runtime.stage_timeout_s:
            log.warning("output lock looks abandoned; taking it over", lock=output.lock)
            ctx.store.delete(output.lock)
            continue
        ctx.progress(0.0, waiting)
        time.sleep(LOCK_POLL_S)
    try:
        # Finished by another worker between our first look and the lock.
        if not ctx.force and (info := stored_info(ctx.store, output)) is not None:
            return Stored(output, info, cache_hit=True)
        return _compute_and_store(ctx, output, compute)
    finally:
        ctx.store.delete(output.lock)


def _compute_and_store(
    ctx: StageContext, output: Output, compute: Callable[[], Produced]
) -> Stored:
    produced = compute()
    missing = set(output.files) ^ set(produced.files)
    if missing:
        raise ValueError(
            f"{output.namespace} output: compute made {sorted(produced.files)}, "
            f"the plan names {sorted(output.files)}"
        )
    keys = output.keys
    for role, file in output.files.items():
        ctx.store.put_file(keys[role], produced.files[role], file.content_type)
    # Last: its presence says every file above is complete.
    write_manifest(ctx.store, output, produced.info)
    log.info("output stored", namespace=output.namespace, digest=output.digest[:12])
    return Stored(output, json.loads(json.dumps(dict(produced.info))), cache_hit=False)


def _lock_owner() -> bytes:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "at": datetime.now(UTC).isoformat()}
    return json.dumps(owner).encode()
