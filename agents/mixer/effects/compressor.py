"""Compressor on the vocals: evens out converted vocals so quiet words sit above the backing."""

from __future__ import annotations

import numpy as np
from pedalboard import Compressor as _PedalboardCompressor

from agents.mixer.effects.base import from_board, to_board
from schemas.events import MixOptions

# Gentle vocal settings: a few dB of gain reduction on loud phrases, attack slow enough to keep
# consonants, release short enough not to pump on a sung line.
THRESHOLD_DB = -18.0
RATIO = 3.0
ATTACK_MS = 10.0
RELEASE_MS = 120.0


class Compressor:
    name = "compressor"

    def __call__(self, audio: np.ndarray, sample_rate: int, mix: MixOptions) -> np.ndarray:
        board = _PedalboardCompressor(
            threshold_db=THRESHOLD_DB, ratio=RATIO, attack_ms=ATTACK_MS, release_ms=RELEASE_MS
        )
        return from_board(board(to_board(audio), sample_rate))
