"""Long mono signals that need not sit in memory: a float32 signal in an unlinked temporary file.

A 10-minute vocal at 48 kHz is 115 MB of float32; the converter holds it while it renders piece by
piece, then mixes its volume, scales its peak, resamples it to the stems' rate and encodes it. Kept
in a :class:`DiskSignal`, those steps read and write it a block at a time with ``pread``/``pwrite``:
the samples live in the page cache (the kernel may write them out), never in the process's
resident memory, so a worker's peak RSS does not grow with the song.

:class:`Signal` is what those steps need of a signal (a length, and reading and writing a slice):
a ``numpy`` array is one too, so short inputs and tests keep plain arrays.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from foundation.levels import fit_length

BLOCK = 1 << 20
"""Samples read or written at a time by the block helpers below (4 MB)."""


class Signal(Protocol):
    """A 1-D float32 signal read and written by contiguous slices."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> np.ndarray: ...

    def __setitem__(self, key: slice, value: np.ndarray, /) -> None: ...


Allocate = Callable[[int], Signal]
"""Makes a zero-filled signal of a length: :func:`in_memory`, or :meth:`DiskSignal.factory`."""


def in_memory(length: int) -> np.ndarray:
    """A zero-filled float32 array: the :data:`Allocate` for signals kept in memory."""
    return np.zeros(length, dtype=np.float32)


class DiskSignal:
    """A zero-filled signal of ``length`` samples (float32, or ``dtype``) in an unlinked
    temporary file.

    Slices read (``signal[a:b]`` gives a new array) and write (``signal[a:b] = array``) like a
    numpy array's, step 1 only. The file goes away when the signal is closed or collected.
    """

    def __init__(
        self, length: int, directory: str | Path | None = None, dtype: type = np.float32
    ) -> None:
        self.dtype = np.dtype(dtype)
        self._itemsize = self.dtype.itemsize
        if length < 0:
            raise ValueError(f"a signal cannot have {length} samples")
        # Closed by close(), __exit__ or the garbage collector: the signal owns the file.
        self._file = tempfile.TemporaryFile(prefix="singtome-signal-", dir=directory)  # noqa: SIM115
        self._fd = self._file.fileno()
        self._length = 0
        self.resize(length)

    @classmethod
    def factory(cls, directory: str | Path | None = None, dtype: type = np.float32) -> Allocate:
        """An :data:`Allocate` making disk signals in ``directory`` (default: the temp dir)."""
        return lambda length: cls(length, directory, dtype)

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"DiskSignal({self._length} samples)"

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DiskSignal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resize(self, length: int) -> None:
        """Trim to ``length`` samples, or extend with zeros."""
        os.ftruncate(self._fd, length * self._itemsize)
        self._length = length

    def _bounds(self, key: slice) -> tuple[int, int]:
        if not isinstance(key, slice):
            raise TypeError("a DiskSignal is read and written by slices")
        first, last, step = key.indices(self._length)
        if step != 1:
            raise ValueError("a DiskSignal slice has step 1")
        return first, max(first, last)

    def __getitem__(self, key: slice) -> np.ndarray:
        first, last = self._bounds(key)
        out = np.empty(last - first, dtype=self.dtype)
        view = memoryview(out).cast("B")
        offset = first * self._itemsize
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from a signal file at byte {offset + done}")
            done += got
        return out

    def __setitem__(self, key: slice, value: np.ndarray | float) -> None:
        first, last = self._bounds(key)
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(value, self.dtype), (last - first,)))
        view = memoryview(data).cast("B")
        offset = first * self._itemsize
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def to_numpy(self) -> np.ndarray:
        """The whole signal as an array (for short signals and tests)."""
        return self[:]


def blocks(signal: Signal, size: int = BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """``(first sample, block)`` pairs covering ``signal`` in order."""
    for first in range(0, len(signal), size):
        yield first, signal[first : first + size]


def peak(signal: Signal) -> float:
    """The largest absolute sample (0 for an empty signal), a block at a time."""
    return max((float(np.max(np.abs(block))) for _, block in blocks(signal)), default=0.0)


def scale(signal: Signal, factor: float) -> None:
    """Multiply ``signal`` by ``factor`` in place, a block at a time."""
    for first, block in blocks(signal):
        signal[first : first + len(block)] = block * np.float32(factor)


def fit(signal: Signal, length: int) -> Signal:
    """``signal`` trimmed or zero-extended to ``length`` samples (a disk signal in place, an
    array by :func:`foundation.levels.fit_length`)."""
    if isinstance(signal, DiskSignal):
        signal.resize(length)
        return signal
    return fit_length(np.asarray(signal), length)


def write_sound_file(
    path: str | Path,
    signal: Signal,
    sample_rate: int,
    format: str = "FLAC",
    subtype: str = "PCM_24",
) -> None:
    """Encode ``signal`` (mono) to ``path`` a block at a time."""
    with sf.SoundFile(
        str(path), "w", samplerate=int(sample_rate), channels=1, format=format, subtype=subtype
    ) as sink:
        for _, block in blocks(signal):
            sink.write(block)
