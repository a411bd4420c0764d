"""Plain functions behind ``singtome separate`` (the CLI module wires them with typer)."""

from __future__ import annotations

from pathlib import Path

from agents.separator.stage import SeparationParams, SeparationResult, separate
from foundation.progress import ProgressFn
from streams.settings import Settings, get_settings


def separate_command(
    song: Path,
    model: str | None = None,
    out_dir: Path | None = None,
    *,
    skip: bool = False,
    denoise_model: str | None = None,
    dereverb_model: str | None = None,
    karaoke_model: str | None = None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
) -> SeparationResult:
    """Separate a local song file into FLAC stems.

    ``model`` defaults to ``SINGTOME_SEPARATOR_MODEL``; ``out_dir`` to ``<song name>_stems`` beside
    the song. Returns the stems written (the caller prints them).
    """
    settings = settings or get_settings()
    song = Path(song)
    params = SeparationParams(
        model=model or settings.separator.model,
        skip=skip,
        denoise_model=denoise_model,
        dereverb_model=dereverb_model,
        karaoke_model=karaoke_model,
    )
    target = Path(out_dir) if out_dir is not None else song.with_name(f"{song.stem}_stems")
    return separate(
        song,
        target,
        params,
        settings.separator,
        progress,
        models=settings.models,
        audio=settings.audio,
    )
