"""Light reverb on the vocals, wet level from ``MixOptions.reverb_wet``.

Converted vocals come out bone dry; a small room places them back in the song's space.
"""

from __future__ import annotations

import numpy as np
from pedalboard import Reverb as _PedalboardReverb

from agents.mixer.effects.base import from_board, to_board
from schemas.events import MixOptions

ROOM_SIZE = 0.3
DAMPING = 0.5


class Reverb:
    name = "reverb"

    def __call__(self, audio: np.ndarray, sample_rate: int, mix: MixOptions) -> np.ndarray:
        if mix.reverb_wet <= 0.0:
            return audio
        board = _PedalboardReverb(
            room_size=ROOM_SIZE,
            damping=DAMPING,
            wet_level=mix.reverb_wet,
            # Keep the dry level so the wet signal adds space without thinning the voice.
            dry_level=1.0 - mix.reverb_wet / 2,
            width=1.0,
        )
        return from_board(board(to_board(audio), sample_rate))
