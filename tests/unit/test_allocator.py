"""The converter keeps freed memory for reuse inside a piece (streams.allocator) and hands the
holes back between pieces, so a long song's RSS does not grow piece after piece."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from streams.allocator import keep_freed_memory, release_freed_memory


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_holes_in_the_heap_go_back_to_the_kernel() -> None:
    if not keep_freed_memory():
        pytest.skip("not glibc: the allocator settings do not apply")
    # 1 MB blocks come from the heap under these settings; keep every tenth, free the rest: the
    # heap's top stays in use, so only the trim can return the 270 MB of holes between them.
    blocks = [np.ones(2**20 // 8) for _ in range(300)]
    kept = blocks[9::10]
    del blocks
    before = _rss_mb()
    assert release_freed_memory()
    after = _rss_mb()
    assert before - after > 150, f"RSS {before:.0f} MB -> {after:.0f} MB"
    assert all(float(block[0]) == 1.0 for block in kept)
