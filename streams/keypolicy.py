"""Which S3 keys an event may name: the one place that decides it, so jobs stay apart.

A job may name (read) keys in these namespaces, and no others:

- its own uploads: under ``SINGTOME_UPLOAD_PREFIX`` filled with its job id (``uploads/<job_id>/``);
- what the pipeline writes itself, named by content: ``stems/<sha256>/``, ``voices/<sha256>/``,
  ``converted/<sha256>/`` and ``tracks/<sha256>/``;
- the shared voice-model prefixes the operator configured (``SINGTOME_SHARED_MODEL_PREFIXES``).

A key must also be in normal form (:func:`streams.keys.key_form_problem`) before any S3 call.
Anything else is answered ``forbidden_key``, or ``invalid_key`` for a key S3 could not take
(neither retriable). The runner checks every key an event names before the stage runs
(:meth:`KeyPolicy.check_event`), and hands the stage a store that checks every key it reads, and
confines every local file it downloads to the job's work dir (:class:`JobStore`), so a key learnt
some other way (a listing, a manifest) is held to the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from foundation.errors import StageError
from schemas.events import S3_KEY_MARK, Event
from streams import keys as keylayout
from streams.settings import Settings
from streams.store import ObjectStore

_DIGEST_SEGMENT = re.compile(
    rf"^(?:{'|'.join(keylayout.CONTENT_ADDRESSED)})/[0-9a-f]{{64}}/", re.ASCII
)


def _refuse(problem: tuple[str, str], key: str, where: str) -> StageError:
    code, reason = problem
    return StageError(code, f"{where}: {reason} ({_shown(key)})")


def _shown(key: str) -> str:
    """A key as it may appear in a message: bounded, and printable whatever it holds."""
    text = key if len(key) <= 200 else key[:200] + "..."
    return ascii(text)


def named_keys(model: BaseModel, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(field path, value)`` of every field marked as an S3 key in an event, at any depth."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        where = f"{path}{name}"
        extra = info.json_schema_extra
        marked = isinstance(extra, dict) and extra.get(S3_KEY_MARK) is True
        if marked and value is not None:
            yield where, value
        elif isinstance(value, BaseModel):
            yield from named_keys(value, where + ".")


class KeyPolicy:
    def __init__(self, settings: Settings) -> None:
        self.upload_pattern = settings.storage.upload_prefix
        self.shared_prefixes = tuple(settings.storage.shared_model_prefixes)

    def prefixes(self, job_id: str) -> tuple[str, ...]:
        """The literal prefixes ``job_id`` may read (besides the content-addressed ones)."""
        return (
            keylayout.upload_prefix(job_id, self.upload_pattern),
            *self.shared_prefixes,
        )

    def allows(self, job_id: str, key: str) -> bool:
        """True when ``key`` (already in normal form) lies in a namespace ``job_id`` may read."""
        if _DIGEST_SEGMENT.match(key):
            return True
        return key.startswith(self.prefixes(job_id))

    def check(self, job_id: str, key: Any, where: str = "key") -> str:
        """``key`` when ``job_id`` may read it; else StageError forbidden_key / invalid_key."""
        problem = keylayout.key_form_problem(key)
        if problem:
            raise _refuse(problem, str(key), where)
        if not self.allows(job_id, key):
            raise StageError(
                "forbidden_key",
                f"{where}: job {job_id} may not name {_shown(key)}; it may name its own uploads "
                f"({keylayout.upload_prefix(job_id, self.upload_pattern)}), pipeline outputs "
                "(stems/, voices/, converted/, tracks/ by digest) and shared model prefixes",
            )
        return key

    def check_event(self, event: Event) -> None:
        """Every key the event names, before the stage (or S3) sees any of them."""
        for where, key in named_keys(event):
            self.check(event.job_id, key, where)

    def store_for(self, store: ObjectStore, job_id: str, workdir: Path) -> JobStore:
        return JobStore(store, self, job_id, workdir)


def check_form(key: Any, where: str = "key") -> str:
    """``key`` when it is in normal form; else StageError invalid_key / forbidden_key."""
    problem = keylayout.key_form_problem(key)
    if problem:
        raise _refuse(problem, str(key), where)
    return str(key)


def confined(root: Path, relative: str | Path) -> Path:
    """``root / relative``, refused (forbidden_key) unless it lands strictly inside ``root``."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if base not in target.parents:
        raise StageError(
            "forbidden_key", f"{_shown(str(relative))} would land outside the job's work dir"
        )
    return target


class JobStore:
    """The object store as one job's stage sees it.

    Reads (``get_*``, ``exists``, ``size``, ``list``, ``presign``) are checked against the key
    policy for the job; downloads land only inside the work dir. Writes go to keys the stage
    derives itself (content digests, locks) and are held to the normal form.
    """

    def __init__(self, store: ObjectStore, policy: KeyPolicy, job_id: str, workdir: Path) -> None:
        self._store = store
        self._policy = policy
        self._job_id = job_id
        self._workdir = Path(workdir)

    def _read(self, key: str) -> str:
        return self._policy.check(self._job_id, key)

    # reads
    def get_file(self, key: str, path: str | Path) -> Path:
        local = confined(self._workdir, path)  # an absolute path replaces the root: refused too
        return self._store.get_file(self._read(key), local)

    def get_bytes(self, key: str) -> bytes:
        return self._store.get_bytes(self._read(key))

    def exists(self, key: str) -> bool:
        return self._store.exists(self._read(key))

    def size(self, key: str) -> int:
        return self._store.size(self._read(key))

    def list(self, prefix: str) -> Iterator[str]:
        return self._store.list(self._read(prefix))

    def presign(self, key: str, expires_s: int) -> str:
        return self._store.presign(self._read(key), expires_s)

    # writes
    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> None:
        self._store.put_file(check_form(key), path, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._store.put_bytes(check_form(key), data, content_type)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._store.put_if_absent(check_form(key), data)

    def delete(self, key: str) -> None:
        self._store.delete(check_form(key))
