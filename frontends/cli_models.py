"""`singtome models ...` and `singtome doctor`: the front end of :mod:`streams.models` and
:mod:`frontends.doctor` (commands only parse, call and print)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from streams.settings import get_settings

models_app = typer.Typer(
    help="Model files: list, pull (resumable, checksum-verified), verify, path.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


@contextmanager
def download_bars() -> Iterator[Callable[[Any, int, int | None], None]]:
    """A progress bar per file being downloaded; yields the fetcher's progress callback."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(),
    ) as bars:
        tasks: dict[str, Any] = {}

        def update(entry: Any, done: int, total: int | None) -> None:
            if entry.name not in tasks:
                tasks[entry.name] = bars.add_task(entry.name[:24], total=total)
            bars.update(tasks[entry.name], completed=done, total=total)

        yield update


def _select(names: list[str]) -> list[Any]:
    from streams.models.manager import UnknownModel, select
    from streams.models.manifest import ManifestError

    try:
        return select(get_settings(), names)
    except (UnknownModel, ManifestError) as exc:
        _fail(str(exc))
        raise  # unreachable


@models_app.command("list")
def models_list(
    names: Annotated[
        list[str] | None, typer.Argument(help="Names or globs (default: every entry).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind (e.g. separation).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The merged list as JSON.")] = False,
) -> None:
    """Every model of the manifest with its local path and state."""
    from streams.models.manager import manifest, states
    from streams.models.manifest import ManifestError

    settings = get_settings()
    try:
        entries = _select(names) if names else list(manifest(settings))
    except ManifestError as exc:
        _fail(str(exc))
    if kind:
        entries = [e for e in entries if e.kind == kind]
    found = states(settings, entries)
    if as_json:
        typer.echo(json.dumps([s.as_json() for s in found], indent=1))
        return
    for state in found:
        size = _human(state.size_on_disk or state.entry.size)
        typer.echo(
            f"{state.entry.name:<48} {state.entry.kind:<17} {state.state:<9} {size:>9}  "
            f"{state.path}"
        )


@models_app.command("pull")
def models_pull(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Names or globs; default: hubert_base.pt rmvpe.pt f0G40k.pth f0D40k.pth"
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (resumable).")
    ] = None,
) -> None:
    """Download models into SINGTOME_MODEL_DIR: resumable, renamed into place once verified."""
    from streams.models.manager import RVC_ESSENTIALS, pull_models

    entries = _select(names or list(RVC_ESSENTIALS))
    settings = get_settings()
    with download_bars() as progress:
        report = pull_models(settings, entries, progress, timeout)
    for result in report.pulled:
        how = "already present" if result.status == "present" else "downloaded"
        if result.resumed_from:
            how += f" (resumed at {result.resumed_from} bytes)"
        if result.pinned:
            how += "; no publisher checksum: its sha256 is now pinned in models.lock.json"
        typer.echo(f"{result.entry.name}\t{how}\t{result.path}")
    for failure in report.failed:
        typer.secho(f"error: {failure}", fg=typer.colors.RED, err=True)
    if not report.ok:
        raise typer.Exit(1)


@models_app.command("verify")
def models_verify(
    names: Annotated[
        list[str] | None, typer.Argument(help="Names or globs (default: every file present).")
    ] = None,
) -> None:
    """Hash model files against the publisher's sha256 (or the one pinned at first download)."""
    from streams.models.manager import manifest, verify_models

    settings = get_settings()
    if names:
        entries = _select(names)
    else:
        entries = [e for e in manifest(settings) if e.local_path(settings.models.dir).is_file()]
    bad = 0
    for state in verify_models(settings, entries):
        if state.state != "verified":
            bad += 1
        colour = typer.colors.GREEN if state.state == "verified" else typer.colors.RED
        detail = f" ({state.detail})" if state.detail else ""
        typer.secho(f"{state.state:<9} {state.entry.name}{detail}\t{state.path}", fg=colour)
    if not entries:
        typer.echo(f"no model files in {settings.models.dir}")
    if bad:
        raise typer.Exit(1)


@models_app.command("path")
def models_path(name: str) -> None:
    """Print where NAME's file is (or goes); exit 1 when it is not there."""
    entries = _select([name])
    entry = next((e for e in entries if e.name == name), entries[0])
    path = entry.local_path(get_settings().models.dir)
    typer.echo(str(path))
    if not path.is_file():
        typer.secho(
            f"{entry.name} is not there yet: `singtome models pull {entry.name}`",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(1)


def doctor(
    stage: Annotated[
        list[str] | None,
        typer.Option(help="Stages this machine runs (repeat; default: all four)."),
    ] = None,
    verify_models: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Hash model files not verified yet.")
    ] = True,
) -> None:
    """Check this machine: torch and device, ffmpeg, models, broker, S3, topics, disk."""
    from foundation.logging import configure_logging
    from frontends.doctor import run_checks

    configure_logging("ERROR", "console")
    colours = {"ok": typer.colors.GREEN, "warn": typer.colors.YELLOW, "fail": typer.colors.RED}
    failed = False
    for check in run_checks(get_settings(), stages=stage or None, verify=verify_models):
        typer.secho(f"{check.status:<4} {check.name:<16}  {check.detail}", fg=colours[check.status])
        failed = failed or check.status == "fail"
    if failed:
        raise typer.Exit(1)
