"""Downloading and checking model files.

A download goes to ``<model_dir>/.partial/<path>.part`` (never where a model is looked for),
resumes with an HTTP ``Range`` request after a cut connection or in a later run (``If-Range``
keeps a changed file from being stitched onto an old part), and is renamed into place only once
its checksum holds: the publisher's sha256 when the manifest has one, else the sha256 pinned in
the lock file by the first download of the entry (which this download then records). A file that
does not match is deleted; nothing is left where a model is looked for.

Connect timeouts are short (``SINGTOME_MODEL_CONNECT_TIMEOUT_S``); a refused connection or an
unknown host fails at once with a message naming the file and where to put it by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from streams.models.lock import read_lock, record, update_lock
from streams.models.manifest import ModelEntry, source_url

if TYPE_CHECKING:
    import requests

    from streams.settings import Settings

PARTIAL_DIR = ".partial"
CHUNK = 1024 * 1024  # hashing reads
# Network reads: bytes reach the part file in pieces this big, so a cut connection loses at most
# one piece (the one being read) and the resume starts just before where the cut happened.
NET_CHUNK = 64 * 1024
# Attempts after a failure that brought no new bytes; attempts that made progress do not count
# (a flaky link that cuts every few MB still finishes), up to MAX_ATTEMPTS in all.
MAX_ATTEMPTS = 200
USER_AGENT = "singtome-models/1"

ProgressFn = Callable[[ModelEntry, int, int | None], None]
State = Literal["absent", "partial", "present", "verified", "mismatch"]


@dataclass(frozen=True)
class FetchConfig:
    model_dir: Path
    mirror: str | None = None
    hf_endpoint: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchConfig:
        models = settings.models
        return cls(
            model_dir=models.dir,
            mirror=models.mirror,
            hf_endpoint=models.hf_endpoint,
            connect_timeout_s=models.connect_timeout_s,
            read_timeout_s=models.read_timeout_s,
            retries=models.retries,
        )


class ModelFileError(Exception):
    """A model file that could not be fetched or does not check out; says what to do by hand."""

    def __init__(self, entry: ModelEntry, path: Path, message: str, *, hint: bool = True) -> None:
        self.entry = entry
        self.path = path
        self.message = message
        text = message
        if hint:
            checksum = f", sha256 {entry.sha256}" if entry.sha256 else ""
            text += (
                f". Put the file there by hand: {path} (from {entry.url}{checksum}), or point "
                "SINGTOME_MODEL_MIRROR at a mirror with the same paths"
            )
        super().__init__(text)


class DownloadFailed(ModelFileError):
    pass


class ChecksumMismatch(ModelFileError):
    pass


@dataclass(frozen=True)
class FileState:
    entry: ModelEntry
    path: Path
    state: State
    detail: str = ""
    size_on_disk: int | None = None
    sha256: str | None = None  # the checksum the file is held to (publisher's or pinned)
    pinned: bool = False  # the checksum comes from the lock file, not the publisher

    def as_json(self) -> dict[str, Any]:
        entry = self.entry.model_dump(mode="json")
        entry.update(
            path=str(self.path),
            state=self.state,
            detail=self.detail,
            size_on_disk=self.size_on_disk,
            expected_sha256=self.sha256,
            pinned=self.pinned,
        )
        return entry


@dataclass(frozen=True)
class PullResult:
    entry: ModelEntry
    path: Path
    status: Literal["present", "downloaded"]
    url: str | None = None
    fetched_bytes: int = 0
    resumed_from: int = 0
    pinned: bool = False


def partial_path(entry: ModelEntry, model_dir: Path) -> Path:
    return Path(model_dir) / PARTIAL_DIR / f"{entry.relative_path}.part"


def expected(entry: ModelEntry, lock: dict[str, dict[str, Any]]) -> tuple[str | None, int | None]:
    """The sha256 and size a file must have: the manifest's, else those pinned in the lock."""
    pin = lock.get(entry.name, {})
    pinned_here = pin.get("pinned") and pin.get("url") == entry.url
    sha = entry.sha256 or (pin.get("sha256") if pinned_here else None)
    size = entry.size or (pin.get("size") if pinned_here else None)
    return sha, size


def sha256_of(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as source:
        while remaining is None or remaining > 0:
            block = source.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# state and verification
# --------------------------------------------------------------------------------------------------


def file_state(
    entry: ModelEntry, model_dir: Path, lock: dict[str, dict[str, Any]] | None = None
) -> FileState:
    """The state of an entry's file without hashing it (the lock remembers the last hash)."""
    lock = read_lock(model_dir) if lock is None else lock
    path = entry.local_path(model_dir)
    sha, size = expected(entry, lock)
    pinned = sha is not None and entry.sha256 is None
    common = {"sha256": sha, "pinned": pinned}
    if not path.is_file():
        part = partial_path(entry, model_dir)
        if part.is_file():
            have = part.stat().st_size
            of = f" of {size}" if size else ""
            return FileState(
                entry, path, "partial", f"{have}{of} bytes downloaded; pull resumes", **common
            )
        return FileState(entry, path, "absent", **common)
    stat = path.stat()
    if size is not None and stat.st_size != size:
        return FileState(
            entry,
            path,
            "mismatch",
            f"{stat.st_size} bytes, expected {size}",
            stat.st_size,
            **common,
        )
    seen = lock.get(entry.name, {})
    if (
        seen.get("verified_size") == stat.st_size
        and seen.get("verified_mtime_ns") == stat.st_mtime_ns
        and seen.get("verified_sha256")
    ):
        if sha is None or seen["verified_sha256"] == sha:
            how = "pinned sha256" if pinned else ("sha256" if sha else "unpinned")
            return FileState(entry, path, "verified", how, stat.st_size, **common)
        return FileState(entry, path, "mismatch", "sha256 differs", stat.st_size, **common)
    return FileState(entry, path, "present", "not verified yet", stat.st_size, **common)


def verify(entry: ModelEntry, model_dir: Path) -> FileState:
    """Hash the entry's file and compare; the result is remembered in the lock file."""
    lock = read_lock(model_dir)
    path = entry.local_path(model_dir)
    if not path.is_file():
        return file_state(entry, model_dir, lock)
    sha, size = expected(entry, lock)
    pinned = sha is not None and entry.sha256 is None
    stat = path.stat()
    actual = sha256_of(path)
    if (size is not None and stat.st_size != size) or (sha is not None and actual != sha):
        why = (
            f"{stat.st_size} bytes, expected {size}"
            if size is not None and stat.st_size != size
            else f"sha256 {actual[:16]}…, expected {sha[:16]}…"  # type: ignore[index]
        )
        return FileState(entry, path, "mismatch", why, stat.st_size, sha, pinned)
    _remember_verified(model_dir, entry, path, actual)
    how = "pinned sha256" if pinned else ("sha256" if sha else "unpinned: no checksum to hold")
    return FileState(entry, path, "verified", how, stat.st_size, sha, pinned)


def _remember_verified(model_dir: Path, entry: ModelEntry, path: Path, digest: str) -> None:
    stat = path.stat()

    def change(files: dict[str, dict[str, Any]]) -> None:
        entry_record = files.setdefault(entry.name, {})
        entry_record.update(
            path=entry.relative_path,
            verified_sha256=digest,
            verified_size=stat.st_size,
            verified_mtime_ns=stat.st_mtime_ns,
        )

    update_lock(model_dir, change)


# --------------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _held(part: Path) -> Iterator[None]:
    """One download of a file at a time, across processes."""
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part.with_name(part.name + ".lock"), "a+b") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard.fileno(), fcntl.LOCK_UN)


def _reason(exc: BaseException, cfg: FetchConfig) -> str:
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {cfg.connect_timeout_s:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"the server sent nothing for {cfg.read_timeout_s:g} s"
    lowered = text.lower()
    if any(
        s in lowered
        for s in ("name or service not known", "temporary failure in name", "nodename nor servname")
    ):
        return "host not found (offline, or no DNS)"
    if "connection refused" in lowered:
        return "connection refused"
    if "network is unreachable" in lowered:
        return "network unreachable (offline)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.SSLError):
        return f"transfer broken: {text.splitlines()[0][:160]}"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _fatal_connect(exc: BaseException) -> bool:
    """Offline or refused: retrying at once would only delay the message."""
    lowered = str(exc).lower()
    return any(
        s in lowered
        for s in (
            "name or service not known",
            "temporary failure in name",
            "nodename nor servname",
            "connection refused",
            "network is unreachable",
        )
    )


class _Transfer:
    """The state of one download across its attempts."""

    def __init__(self, entry: ModelEntry, cfg: FetchConfig, url: str) -> None:
        self.entry = entry
        self.cfg = cfg
        self.url = url
        self.target = entry.local_path(cfg.model_dir)
        self.part = partial_path(entry, cfg.model_dir)
        self.meta_path = self.part.with_name(self.part.name + ".json")
        lock = read_lock(cfg.model_dir)
        self.sha, self.size = expected(entry, lock)
        self.meta = self._read_meta()
        self.resumed_from = 0  # where the first resumed request started (0: never resumed)
        self.fetched = 0

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("entry_url") != self.entry.url:
            # A part from another source file (the manifest changed): start over.
            self.discard()
            meta = {}
        return meta

    def discard(self) -> None:
        for path in (self.part, self.meta_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _save_meta(self, response: requests.Response) -> None:
        self.meta = {
            "entry_url": self.entry.url,
            "url": self.url,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
        }
        self.meta_path.write_text(json.dumps(self.meta))

    def fail(self, message: str) -> DownloadFailed:
        return DownloadFailed(
            self.entry, self.target, f"could not fetch {self.entry.name} from {self.url}: {message}"
        )

    def mismatch(self, message: str) -> ChecksumMismatch:
        self.discard()
        return ChecksumMismatch(
            self.entry,
            self.target,
            f"{self.entry.name} from {self.url}: {message}; the download was deleted and "
            "nothing was installed",
        )


def pull(
    entry: ModelEntry,
    cfg: FetchConfig,
    progress: ProgressFn | None = None,
    deadline: float | None = None,
    session: requests.Session | None = None,
) -> PullResult:
    """Make the entry's file present and checked; download (or resume) it when needed.

    Raises :class:`DownloadFailed` (offline, refused, 404, timed out: a partial download is kept
    for the next pull) or :class:`ChecksumMismatch` (the bytes are not the expected ones: deleted).
    ``deadline`` is a ``time.monotonic()`` value past which the download stops (and can resume).
    """
    import requests

    url = source_url(entry, cfg.mirror, cfg.hf_endpoint)
    target = entry.local_path(cfg.model_dir)
    part = partial_path(entry, cfg.model_dir)
    with _held(part):
        if target.is_file():
            state = verify(entry, cfg.model_dir)
            if state.state == "verified":
                return PullResult(entry, target, "present", pinned=state.pinned)
        transfer = _Transfer(entry, cfg, url)
        own_session = session is None
        http = session or requests.Session()
        http.headers["User-Agent"] = USER_AGENT
        try:
            _download(transfer, http, progress, deadline)
        finally:
            if own_session:
                http.close()
        return _install(transfer)


def _download(
    transfer: _Transfer,
    http: requests.Session,
    progress: ProgressFn | None,
    deadline: float | None,
) -> None:
    import requests

    cfg = transfer.cfg
    failures = 0
    for _attempt in range(MAX_ATTEMPTS):
        if deadline is not None and time.monotonic() > deadline:
            raise transfer.fail("out of time (the partial download is kept; pull again to resume)")
        offset = transfer.part.stat().st_size if transfer.part.is_file() else 0
        if transfer.size is not None and offset > transfer.size:
            transfer.discard()
            offset = 0
        if transfer.size is not None and offset == transfer.size:
            return
        headers: dict[str, str] = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = transfer.meta.get("etag") or transfer.meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        before = offset
        try:
            with http.get(
                transfer.url,
                headers=headers,
                stream=True,
                timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
                allow_redirects=True,
            ) as response:
                done = _receive(transfer, response, offset, progress, deadline)
            if done:
                return
        except requests.exceptions.RequestException as exc:
            grew = transfer.part.is_file() and transfer.part.stat().st_size > before
            if not grew and (_fatal_connect(exc) or failures >= cfg.retries):
                raise transfer.fail(_reason(exc, cfg)) from None
            if not grew:
                failures += 1
                time.sleep(min(cfg.backoff_s * 2 ** (failures - 1), 30.0))
            continue
        except _Retry as retry:
            if retry.progress:
                continue
            if failures >= cfg.retries:
                raise transfer.fail(retry.reason) from None
            failures += 1
            time.sleep(min(cfg.backoff_s * 2 ** (failures - 1), 30.0))
    raise transfer.fail(f"gave up after {MAX_ATTEMPTS} attempts")


class _Retry(Exception):
    def __init__(self, reason: str, progress: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.progress = progress


def _receive(
    transfer: _Transfer,
    response: requests.Response,
    offset: int,
    progress: ProgressFn | None,
    deadline: float | None,
) -> bool:
    """Write one response's body to the part file; True when the download is complete."""
    status = response.status_code
    if status == 416 and offset:
        # The part is as long as (or longer than) the file: complete if it checks out, else anew.
        if transfer.size is None or offset != transfer.size:
            transfer.discard()
            raise _Retry("the server refused the resume range", progress=True)
        return True
    if status in (404, 410):
        raise transfer.fail(f"not found (HTTP {status})")
    if status in (401, 403):
        raise transfer.fail(f"refused (HTTP {status}: the file needs access rights)")
    if status == 429 or status >= 500:
        raise _Retry(f"the server answered HTTP {status}")
    if status not in (200, 206):
        raise transfer.fail(f"unexpected HTTP {status}")
    mode = "ab"
    if status == 206:
        start = _range_start(response.headers.get("Content-Range", ""))
        if start != offset:
            transfer.discard()
            raise _Retry("the server resumed at the wrong offset", progress=True)
        transfer.resumed_from = transfer.resumed_from or offset
    else:  # 200: the whole file (a fresh start, or the server would not resume / it changed)
        offset = 0
        mode = "wb"
    transfer._save_meta(response)
    length = response.headers.get("Content-Length")
    offered = offset + int(length) if length is not None and length.isdigit() else None
    if transfer.size is not None and offered is not None and offered != transfer.size:
        # Another file than the manifest's (a wrong mirror, a changed upload): no use fetching it.
        raise transfer.mismatch(f"the server offers {offered} bytes; expected {transfer.size}")
    total = transfer.size if transfer.size is not None else offered
    written = offset
    if progress:
        progress(transfer.entry, written, total)
    with open(transfer.part, mode) as out:
        for block in response.iter_content(NET_CHUNK):
            if not block:
                continue
            out.write(block)
            written += len(block)
            transfer.fetched += len(block)
            if transfer.size is not None and written > transfer.size:
                out.close()
                raise transfer.mismatch(
                    f"the server sent more than the manifest's {transfer.size} bytes"
                )
            if progress:
                progress(transfer.entry, written, total)
            if deadline is not None and time.monotonic() > deadline:
                out.flush()
                raise transfer.fail(
                    "out of time (the partial download is kept; pull again to resume)"
                )
        out.flush()
        os.fsync(out.fileno())
    if total is not None and written < total:
        raise _Retry("the connection closed early", progress=written > offset)
    return True


def _range_start(content_range: str) -> int | None:
    # "bytes 100-999/1000"
    try:
        unit, _, spec = content_range.partition(" ")
        if unit.strip().lower() != "bytes":
            return None
        return int(spec.split("-", 1)[0])
    except ValueError:
        return None


def _install(transfer: _Transfer) -> PullResult:
    """Check the part and rename it into place, or delete it."""
    entry, part, target = transfer.entry, transfer.part, transfer.target
    have = part.stat().st_size
    if transfer.size is not None and have != transfer.size:
        raise transfer.mismatch(f"{have} bytes, but the manifest says {transfer.size}")
    digest = sha256_of(part)
    pinned_now = False
    if transfer.sha is not None and digest != transfer.sha:
        source = "the manifest" if entry.sha256 else "the lock file (pinned on first download)"
        raise transfer.mismatch(f"sha256 {digest}, but {source} says {transfer.sha}")
    if transfer.sha is None:
        pinned_now = True
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    with contextlib.suppress(FileNotFoundError):
        transfer.meta_path.unlink()
    stat = target.stat()
    record(
        transfer.cfg.model_dir,
        entry.name,
        {
            "path": entry.relative_path,
            "url": entry.url,
            "fetched_from": transfer.url,
            "sha256": digest,
            "size": stat.st_size,
            "pinned": entry.sha256 is None,
            "checksum_source": "publisher" if entry.sha256 else "first download",
            "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "verified_sha256": digest,
            "verified_size": stat.st_size,
            "verified_mtime_ns": stat.st_mtime_ns,
        },
    )
    return PullResult(
        entry,
        target,
        "downloaded",
        url=transfer.url,
        fetched_bytes=transfer.fetched,
        resumed_from=transfer.resumed_from,
        pinned=pinned_now,
    )
