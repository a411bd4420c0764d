"""What `singtome models list | pull | verify | path` do, as plain functions over the settings."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.models.fetch import (
    FetchConfig,
    FileState,
    ModelFileError,
    ProgressFn,
    PullResult,
    file_state,
    pull,
    verify,
)
from streams.models.lock import read_lock
from streams.models.manifest import Manifest, ModelEntry, load_manifest
from streams.settings import Settings

# What `./singtome demo` (and an RVC voice stage) wants: the content encoder RVC uses, RMVPE and
# the 40 kHz pretrained pair the trainer starts from by default.
RVC_ESSENTIALS = ("hubert_base.pt", "rmvpe.pt", "f0G40k.pth", "f0D40k.pth")


class UnknownModel(KeyError):
    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern

    def __str__(self) -> str:
        return (
            f"no model named {self.pattern!r} in the manifest "
            "(`singtome models list` shows the names)"
        )


def manifest(settings: Settings) -> Manifest:
    return load_manifest(settings.models.manifest)


def select(settings: Settings, names: Iterable[str]) -> list[ModelEntry]:
    try:
        return manifest(settings).select(names)
    except KeyError as exc:
        raise UnknownModel(str(exc.args[0])) from None


def states(settings: Settings, entries: Iterable[ModelEntry] | None = None) -> list[FileState]:
    lock = read_lock(settings.models.dir)
    chosen = manifest(settings) if entries is None else entries
    return [file_state(e, settings.models.dir, lock) for e in chosen]


@dataclass
class PullReport:
    pulled: list[PullResult] = field(default_factory=list)
    failed: list[ModelFileError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def pull_models(
    settings: Settings,
    entries: Iterable[ModelEntry],
    progress: ProgressFn | None = None,
    timeout_s: float | None = None,
    stop_at_first_failure: bool = False,
) -> PullReport:
    """Pull each entry in turn; a failure is recorded and the others still pulled (unless told)."""
    cfg = FetchConfig.from_settings(settings)
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    report = PullReport()
    for entry in entries:
        try:
            report.pulled.append(pull(entry, cfg, progress, deadline))
        except ModelFileError as exc:
            report.failed.append(exc)
            if stop_at_first_failure:
                break
    return report


def verify_models(
    settings: Settings, entries: Iterable[ModelEntry] | None = None
) -> list[FileState]:
    """Hash every present file (or those named) against its checksum."""
    chosen = list(manifest(settings) if entries is None else entries)
    return [verify(e, settings.models.dir) for e in chosen]
