"""The one interface every separation backend implements.

A backend turns a block of the song (float32 ``(frames, 2)`` at :data:`SAMPLE_RATE`) into named
stems of the same shape. It never sees files, chunking or storage: the stage streams the song
through it chunk by chunk, so a new model family is one small module.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 44100

Stems = dict[str, np.ndarray]


@runtime_checkable
class SeparationBackend(Protocol):
    name: str
    """The model's name as recorded in events and keys (``'spleeter'``, a UVR file name)."""

    stems: tuple[str, ...]
    """Names of the stems :meth:`separate` returns, in a stable order."""

    def separate(self, audio: np.ndarray) -> Stems:
        """Split ``audio`` (``(frames, 2)`` float32) into stems, each ``(frames, 2)`` float32."""
        ...
