"""``singtome convert``: the seed's ``rvc-infer.py`` as a command (the CLI wires it into typer).

The option names are the seed's: ``sid0`` is the voice model (a path, or a name in the model
directory, with or without ``.pth``), ``input_audio0`` the vocals, ``file_index2`` the index
(optional). A WORLD ``profile.npz`` in place of the model uses the no-weights fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.converter.stage import ConversionResult, convert_vocals
from foundation.errors import StageError
from schemas.events import ConversionOptions
from streams.settings import Settings, get_settings


def _resolve_model_file(name: str, settings: Settings, suffixes: tuple[str, ...]) -> Path:
    """A path as given, else the name looked up in the model directory (suffix optional)."""
    given = Path(name).expanduser()
    if given.is_file():
        return given
    model_dir = settings.models.dir
    candidates = [model_dir / name] + [model_dir / f"{name}{suffix}" for suffix in suffixes]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StageError(
        "model_not_found",
        f"{name!r} is neither a file nor in the model directory {model_dir}",
    )


def convert_command(
    sid0: str,
    input_audio0: str,
    file_index2: str | None = None,
    *,
    params: ConversionOptions | None = None,
    out: str | None = None,
    settings: Settings | None = None,
    **knobs: Any,
) -> ConversionResult:
    """Convert ``input_audio0`` into the voice ``sid0``; writes FLAC to ``out`` (default
    ``<input>_converted.flac`` beside the input) and returns what was written.

    ``params`` are the conversion options (their defaults are the product's); ``knobs`` instead
    set some of them by name (``f0_up_key=-12``), the rest keeping their defaults."""
    settings = settings or get_settings()
    if params is None:
        params = ConversionOptions(**knobs)
    elif knobs:
        raise TypeError("give params or option names, not both")
    model = _resolve_model_file(sid0, settings, (".pth", ".npz"))
    voice_files = [model]
    if file_index2:
        voice_files.append(_resolve_model_file(file_index2, settings, (".index",)))
    vocals = Path(input_audio0).expanduser()
    out_path = Path(out) if out else vocals.with_name(f"{vocals.stem}_converted.flac")
    return convert_vocals(
        vocals,
        voice_files,
        params,
        settings.converter,
        out_path=out_path,
        models=settings.models,
        audio=settings.audio,
    )
