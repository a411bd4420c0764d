"""Key shift of the accompaniment and backing vocals by ``MixOptions.key_shift`` semitones.

pedalboard's offline ``time_stretch`` (Rubber Band's high-quality engine, bundled in the wheel, so
it works offline) with a stretch factor of 1: the pitch moves, the duration stays. The real-time
``PitchShift`` plugin was measured 0.2 semitone sharp on a held tone, so it is not used. Formants
are preserved, which keeps backing vocals from sounding chipmunk-like. The shift goes with a
vocal transpose (``conversion.f0_up_key``) so the song fits the person's range.
"""

from __future__ import annotations

import numpy as np
from pedalboard import time_stretch

from agents.mixer.effects.base import from_board, to_board
from foundation.levels import fit_length
from schemas.events import MixOptions


class KeyShift:
    name = "key_shift"

    def __call__(self, audio: np.ndarray, sample_rate: int, mix: MixOptions) -> np.ndarray:
        if mix.key_shift == 0:
            return audio
        shifted = from_board(
            time_stretch(
                to_board(audio),
                sample_rate,
                stretch_factor=1.0,
                pitch_shift_in_semitones=float(mix.key_shift),
            )
        )
        # The stretcher may return a few samples more or less; the mix needs the same length.
        return fit_length(shifted, audio.shape[0])
