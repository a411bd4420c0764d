"""The one LRU model cache (foundation/cache.py) and the two caches built on it: the converter's
byte-bounded ModelCache and the separator's count-bounded backend cache."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agents.separator import backends
from foundation.cache import LruCache


def _loader(loads: list[str], name: str, value: Any = None) -> Any:
    def load() -> Any:
        loads.append(name)
        return value if value is not None else object()

    return load


def test_count_bound_evicts_the_least_recently_used() -> None:
    loads: list[str] = []
    cache: LruCache[str, Any] = LruCache(max_entries=2)
    a = cache.get("a", _loader(loads, "a"))
    cache.get("b", _loader(loads, "b"))
    assert cache.get("a", _loader(loads, "a")) is a  # a is now the most recent
    cache.get("c", _loader(loads, "c"))  # over the bound: b goes
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    cache.get("b", _loader(loads, "b"))  # loaded again; a (least recent now) goes
    assert "a" not in cache
    assert loads == ["a", "b", "c", "b"]
    assert cache.hits == 1 and cache.misses == 4


def test_byte_bound_keeps_the_most_recent_entry_even_alone_over_it() -> None:
    cache: LruCache[str, bytes] = LruCache(max_bytes=10)
    cache.get("a", lambda: b"x" * 4, len)
    cache.get("b", lambda: b"x" * 4, len)
    assert cache.total_bytes == 8 and len(cache) == 2
    cache.get("c", lambda: b"x" * 4, len)  # 12 > 10: a goes
    assert "a" not in cache and cache.total_bytes == 8
    cache.get("huge", lambda: b"x" * 100, len)
    assert "huge" in cache and len(cache) == 1 and cache.total_bytes == 100


def test_both_bounds_apply_and_none_means_unbounded() -> None:
    both: LruCache[int, bytes] = LruCache(max_entries=3, max_bytes=10)
    for key in range(3):
        both.get(key, lambda: b"xx", len)
    assert len(both) == 3  # 6 bytes, 3 entries: within both
    both.get(3, lambda: b"xx", len)
    assert len(both) == 3 and 0 not in both  # the count bound
    both.get(4, lambda: b"x" * 8, len)
    assert 3 in both and 4 in both and len(both) == 2  # 10 bytes: the byte bound
    unbounded: LruCache[int, int] = LruCache()
    for key in range(50):
        unbounded.get(key, lambda: 0)
    assert len(unbounded) == 50


def test_a_failed_load_stores_nothing_and_concurrent_askers_load_once() -> None:
    cache: LruCache[str, object] = LruCache(max_entries=2)

    def broken() -> object:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        cache.get("a", broken)
    assert "a" not in cache and len(cache) == 0

    loads: list[str] = []

    def slow() -> object:
        loads.append("m")
        time.sleep(0.05)
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("m", slow))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["m"] and len({id(value) for value in got}) == 1


def test_converter_model_cache_limit_is_its_byte_bound() -> None:
    from agents.converter.models import ModelCache

    cache = ModelCache(limit_bytes=100)
    assert cache.limit_bytes == cache.max_bytes == 100 and cache.max_entries is None
    cache.limit_bytes = 10  # shared_cache() follows a changed setting this way
    cache.get("a", lambda: b"x" * 8, len)
    cache.get("b", lambda: b"x" * 8, len)
    assert "a" not in cache and "b" in cache


def test_separator_keeps_four_backends_least_recently_used_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    created: list[str] = []

    def create(model: str, model_dir: Path, device: str) -> Any:
        created.append(model)
        return object()

    monkeypatch.setattr(backends, "_create", create)
    backends.clear_cache()
    try:
        first = backends.load_backend("m0.onnx", tmp_path)
        for index in range(1, 4):
            backends.load_backend(f"m{index}.onnx", tmp_path)
        assert backends.load_backend("m0.onnx", tmp_path) is first  # a hit: m0 most recent
        backends.load_backend("m4.onnx", tmp_path)  # fifth: m1 (least recent) goes
        assert created == ["m0.onnx", "m1.onnx", "m2.onnx", "m3.onnx", "m4.onnx"]
        backends.load_backend("m1.onnx", tmp_path)
        backends.load_backend("m0.onnx", tmp_path, device="cuda")  # the device is in the key
        assert created[5:] == ["m1.onnx", "m0.onnx"]
        assert backends.load_backend("m4.onnx", tmp_path) is not None and len(created) == 7
    finally:
        backends.clear_cache()
