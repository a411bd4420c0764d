"""Loaded models stay loaded across events: an LRU cache bounded by their parameter bytes.

Loading a voice model or the content encoder costs seconds (and a GPU upload); a converter worker
usually sees the same encoder for every job and the same voice model for a person's several
songs. Entries are keyed by content (a hash of the model file) and the device, so a changed file
is never served stale, and evicted least-recently-used first once the estimated size passes
``settings.converter.model_cache_mb``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from foundation.cache import LruCache
from streams.keys import sha256_file
from streams.settings import ConverterSettings

T = TypeVar("T")


def _direct_bytes(value: Any) -> int:
    if isinstance(value, nn.Module):
        tensors = [*value.parameters(), *value.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return 0


def estimated_bytes(obj: Any) -> int:
    """Memory an entry holds: parameters and buffers of its torch modules, and numpy arrays.

    Looks one level into tuples and plain objects (a VoiceModel's synthesizer, an encoder
    wrapper's model), which is where the bulk of every model we load lives.
    """
    size = _direct_bytes(obj)
    if size:
        return size
    if isinstance(obj, tuple | list):
        members: Any = obj
    elif hasattr(obj, "__dict__"):
        members = vars(obj).values()
    else:
        return 0
    return sum(_direct_bytes(member) for member in members)


def _index_bytes(loaded: tuple[Any, np.ndarray]) -> int:
    # faiss holds its own copy of the vectors beside big_npy.
    return 2 * int(np.asarray(loaded[1]).nbytes)


class ModelCache(LruCache[str, Any]):
    """Least-recently-used cache of loaded models, bounded by their estimated bytes
    (:class:`foundation.cache.LruCache`).

    The most recently used entry is always kept, even when it alone is over the bound: a worker
    must be able to hold the one model it is using.
    """

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(max_bytes=limit_bytes)

    @property
    def limit_bytes(self) -> int:
        return 0 if self.max_bytes is None else self.max_bytes

    @limit_bytes.setter
    def limit_bytes(self, value: int) -> None:
        self.max_bytes = int(value)

    def get(  # type: ignore[override]
        self, key: str, load: Callable[[], T], size: Callable[[T], int] = estimated_bytes
    ) -> T:
        value: T = super().get(key, load, size)
        return value


_shared: ModelCache | None = None
_shared_lock = threading.Lock()


def shared_cache(settings: ConverterSettings) -> ModelCache:
    """The process-wide cache, bounded by ``settings.model_cache_mb``."""
    global _shared
    with _shared_lock:
        limit = settings.model_cache_mb * 2**20
        if _shared is None:
            _shared = ModelCache(limit)
        elif _shared.limit_bytes != limit:
            _shared.limit_bytes = limit
        return _shared


def _file_identity(path: Path) -> str:
    """Cheap identity for big files configured by path (the content encoder): path, size, mtime."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cached_voice_model(
    path: Path,
    device: torch.device,
    cache: ModelCache,
    runtime: str = "auto",
    tile_frames: int | None = None,
) -> Any:
    """The voice model at ``path``, readied for the fast synthesizer path
    (:func:`agents.voice.inference.prepare_for_inference`)."""
    from agents.voice.checkpoint import load_voice_model
    from agents.voice.inference import DEFAULT_TILE_FRAMES, prepare_for_inference

    tile = tile_frames or DEFAULT_TILE_FRAMES

    def load() -> Any:
        return prepare_for_inference(load_voice_model(path, device), runtime, tile)  # type: ignore[arg-type]

    key = f"voice:{sha256_file(path)}:{device}:{runtime}:{tile}"
    return cache.get(key, load)


def cached_content_encoder(path: Path, device: torch.device, cache: ModelCache) -> Any:
    from agents.voice.content import load_content_encoder

    path = Path(path)
    if not path.exists():
        from foundation.errors import StageError

        raise StageError("model_not_found", f"content encoder {path} does not exist")
    key = f"encoder:{_file_identity(path)}:{device}"
    return cache.get(key, lambda: load_content_encoder(path, device))


def cached_index(path: Path, cache: ModelCache) -> tuple[Any, np.ndarray]:
    from agents.voice.index import load_index

    key = f"index:{sha256_file(path)}"
    return cache.get(key, lambda: load_index(path), _index_bytes)
