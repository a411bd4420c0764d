"""The one least-recently-used cache of loaded models, bounded by entry count, by estimated bytes,
or both. The converter's :class:`~agents.converter.models.ModelCache` (bytes) and the separator's
backend cache (count) are this class.

The most recently used entry is always kept, even when it alone is over a bound: a worker must be
able to hold the one model it is using. Loading happens under the cache's lock, so two jobs asking
for one model load it once (and two different models never load at the same time).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from foundation.logging import get_logger

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _no_size(value: object) -> int:
    return 0


class LruCache(Generic[K, V]):
    """Loaded values by key, least recently used evicted first once ``max_entries`` or
    ``max_bytes`` (the sum of each entry's size when it was stored) is passed; ``None``: no
    bound of that kind."""

    def __init__(self, *, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def get(self, key: K, load: Callable[[], V], size: Callable[[V], int] = _no_size) -> V:
        """The value for ``key``, from ``load()`` on a miss; ``size(value)`` is its bytes."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key][0]
            self.misses += 1
            value = load()
            self._entries[key] = (value, int(size(value)))
            self._evict()
            return value

    def _over(self) -> bool:
        if self.max_entries is not None and len(self._entries) > self.max_entries:
            return True
        return self.max_bytes is not None and self.total_bytes > self.max_bytes

    def _evict(self) -> None:
        while len(self._entries) > 1 and self._over():
            key, (_, size) = self._entries.popitem(last=False)
            log.info("model evicted from cache", key=key, mb=round(size / 2**20, 1))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
