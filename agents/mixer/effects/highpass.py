"""High-pass on the vocals: removes rumble and breath thumps below the singing range."""

from __future__ import annotations

import numpy as np
from pedalboard import HighpassFilter

from agents.mixer.effects.base import from_board, to_board
from schemas.events import MixOptions

# Below the lowest sung fundamental of most voices (bass ~E2 = 82 Hz), so it costs no tone.
CUTOFF_HZ = 80.0


class HighPass:
    name = "highpass"

    def __call__(self, audio: np.ndarray, sample_rate: int, mix: MixOptions) -> np.ndarray:
        board = HighpassFilter(cutoff_frequency_hz=CUTOFF_HZ)
        return from_board(board(to_board(audio), sample_rate))
