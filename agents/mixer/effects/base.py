"""The one protocol every mix effect implements.

An effect is a small object with a ``name`` and a ``__call__`` that takes audio as a float32 array
shaped ``(samples, channels)`` and returns a new array of the same shape. It reads its per-job
settings from :class:`~schemas.events.MixOptions`, so adding an effect is one new module plus one
line in the registry (``agents/mixer/effects/__init__.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from schemas.events import MixOptions


@runtime_checkable
class Effect(Protocol):
    name: str

    def __call__(self, audio: np.ndarray, sample_rate: int, mix: MixOptions) -> np.ndarray: ...


def to_board(audio: np.ndarray) -> np.ndarray:
    """(samples, channels) -> the (channels, samples) float32 layout pedalboard processes."""
    return np.ascontiguousarray(audio.T, dtype=np.float32)


def from_board(audio: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(audio.T, dtype=np.float32)
