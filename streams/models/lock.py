"""``<model_dir>/models.lock.json``: what was downloaded, and the checksum each file is held to.

A file whose publisher states no sha256 is pinned here on its first download (its size and sha256),
so a later download of the same entry must produce the same bytes. Each record also remembers the
size and mtime at which the file was last hashed, so listing states needs no re-hashing.
Updates are read-modify-write under an exclusive ``fcntl`` lock and replace the file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = "models.lock.json"
LOCK_VERSION = 1


def lock_path(model_dir: Path) -> Path:
    return Path(model_dir) / LOCK_FILE


def read_lock(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Records by entry name; an absent or unreadable lock file is empty."""
    try:
        data = json.loads(lock_path(model_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in (files or {}).items() if isinstance(v, dict)}


@contextlib.contextmanager
def _exclusive(model_dir: Path) -> Iterator[None]:
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(model_dir) / f".{LOCK_FILE}.lock", "a+b") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard.fileno(), fcntl.LOCK_UN)


def update_lock(model_dir: Path, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
    """Apply ``change`` to the records and write them back atomically."""
    with _exclusive(model_dir):
        files = read_lock(model_dir)
        change(files)
        target = lock_path(model_dir)
        fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"version": LOCK_VERSION, "files": files}, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def record(model_dir: Path, name: str, fields: dict[str, Any]) -> None:
    update_lock(model_dir, lambda files: files.__setitem__(name, fields))
