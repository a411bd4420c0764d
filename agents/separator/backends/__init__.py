"""Separation backends, picked by model name.

``'spleeter'`` is the bundled default; a name ending in a UVR model suffix (``.onnx``, ``.pth``,
``.ckpt``, ``.yaml``, ``.th``) is a UVR model file in ``<model_dir>/uvr`` run by audio-separator.
Loaded backends are kept (a few at a time) so a worker loads each model once, not once per song.

Each backend module has ``create(model, model_dir, device) -> SeparationBackend``; the registry
below names it per backend kind (the vocabulary's ``SEPARATION_BACKENDS``, held equal by a test),
so a new model family is its module, its line here and its name in ``schemas/vocabulary.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from agents.separator.backends.base import SAMPLE_RATE, SeparationBackend, Stems
from foundation.cache import LruCache
from foundation.errors import StageError
from schemas.vocabulary import SeparationBackendKind

__all__ = [
    "BACKEND_REGISTRY",
    "SAMPLE_RATE",
    "SeparationBackend",
    "Stems",
    "backend_kind",
    "load_backend",
]

BACKEND_REGISTRY: dict[SeparationBackendKind, str] = {
    "spleeter": "agents.separator.backends.spleeter:create",
    "a_cappella": "agents.separator.backends.a_cappella:create",
    "uvr": "agents.separator.backends.uvr:create",
}
SPLEETER: SeparationBackendKind = "spleeter"
A_CAPPELLA: SeparationBackendKind = "a_cappella"
_CACHE_SIZE = 4
_cache: LruCache[tuple[str, str, str], SeparationBackend] = LruCache(max_entries=_CACHE_SIZE)


def backend_kind(model: str) -> SeparationBackendKind:
    """``'spleeter'``, ``'a_cappella'`` or ``'uvr'`` for a model name; unknown names are refused."""
    from agents.separator.backends.uvr import is_uvr_model

    if model == SPLEETER:
        return SPLEETER
    if model == A_CAPPELLA:
        return A_CAPPELLA
    if is_uvr_model(model):
        return "uvr"
    raise StageError(
        "model_not_found",
        f"unknown separation model {model!r}: use 'spleeter' or a UVR model file name "
        "(.onnx, .pth, .ckpt, .yaml)",
    )


def _create(model: str, model_dir: Path, device: str) -> SeparationBackend:
    module, function = BACKEND_REGISTRY[backend_kind(model)].split(":")
    backend: SeparationBackend = getattr(importlib.import_module(module), function)(
        model, model_dir, device
    )
    return backend


def load_backend(model: str, model_dir: Path, device: str = "cpu") -> SeparationBackend:
    """The loaded backend for ``model`` on ``device``, reusing one loaded earlier here."""
    return _cache.get((model, str(model_dir), device), lambda: _create(model, model_dir, device))


def clear_cache() -> None:
    _cache.clear()
