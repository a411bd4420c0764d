"""Separation backends, picked by model name.

``'spleeter'`` is the bundled default; a name ending in a UVR model suffix (``.onnx``, ``.pth``,
``.ckpt``, ``.yaml``, ``.th``) is a UVR model file in ``<model_dir>/uvr`` run by audio-separator.
Loaded backends are kept (a few at a time) so a worker loads each model once, not once per song.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from agents.separator.backends.base import SAMPLE_RATE, SeparationBackend, Stems
from foundation.errors import StageError

__all__ = [
    "SAMPLE_RATE",
    "SeparationBackend",
    "Stems",
    "backend_kind",
    "load_backend",
]

SPLEETER = "spleeter"
A_CAPPELLA = "a_cappella"
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, str, str], SeparationBackend] = OrderedDict()
_cache_lock = threading.Lock()


def backend_kind(model: str) -> str:
    """``'spleeter'``, ``'a_cappella'`` or ``'uvr'`` for a model name; unknown names are refused."""
    from agents.separator.backends.uvr import is_uvr_model

    if model in (SPLEETER, A_CAPPELLA):
        return model
    if is_uvr_model(model):
        return "uvr"
    raise StageError(
        "model_not_found",
        f"unknown separation model {model!r}: use 'spleeter' or a UVR model file name "
        "(.onnx, .pth, .ckpt, .yaml)",
    )


def _create(model: str, model_dir: Path, device: str) -> SeparationBackend:
    kind = backend_kind(model)
    if kind == SPLEETER:
        from agents.separator.backends.spleeter import SpleeterBackend

        return SpleeterBackend(device=device)
    if kind == A_CAPPELLA:
        from agents.separator.backends.a_cappella import ACappellaBackend

        return ACappellaBackend()
    from agents.separator.backends.uvr import UvrBackend

    # audio-separator picks its own execution provider (CUDA when onnxruntime/torch see it).
    return UvrBackend(model, model_dir)


def load_backend(model: str, model_dir: Path, device: str = "cpu") -> SeparationBackend:
    """The loaded backend for ``model`` on ``device``, reusing one loaded earlier here."""
    key = (model, str(model_dir), device)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    backend = _create(model, model_dir, device)
    with _cache_lock:
        _cache[key] = backend
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return backend


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
