"""glibc malloc settings for processes that handle large arrays (audio, model activations).

By default glibc serves every allocation above a sliding threshold (128 KiB rising to 32 MiB)
with a fresh ``mmap`` and gives it back to the kernel on ``free``; it also trims the heap top
back to the kernel past 128 KiB. A model layer that allocates and frees a few-MB tensor per call
then makes the kernel zero and map fresh pages every time: page faults that showed up as a third
of the converter's CPU time. Fixing the mmap threshold at its maximum and trimming only above
:data:`TRIM_THRESHOLD` keeps freed memory in the process for reuse. The cost is bounded: at most
:data:`TRIM_THRESHOLD` of freed memory stays mapped. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from functools import cache
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 * 2**20

_lock = threading.Lock()
_applied: bool | None = None


@cache
def _libc() -> Any:
    """The C library, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; True when glibc took them."""
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        _applied = False
        mallopt = getattr(_libc(), "mallopt", None)
        if mallopt is None:
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
        return _applied


def release_freed_memory() -> bool:
    """Give the freed pages inside the heap back to the kernel (glibc ``malloc_trim(0)``); True
    when it ran. Trimming only happens at the heap's top otherwise, so memory freed between
    long-lived arrays stays counted in RSS and a long job's footprint grows piece after piece.
    Call it between large units of work (a converted piece), not inside a model's layers: the
    pages then have to be faulted in again on next use."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
