"""WORLD Harvest: slow but robust on clean, sustained voice (RVC's classic CPU method)."""

from __future__ import annotations

import numpy as np

from agents.voice.f0.base import F0_MAX, F0_MIN, HOP, SAMPLE_RATE, F0Setup, as_audio16k, finish
from agents.voice.f0.world_f0 import world_f0


class HarvestExtractor:
    name = "harvest"

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        x = as_audio16k(audio16k).astype(np.float64)
        frame_period_ms = 1000.0 * HOP / SAMPLE_RATE
        # world_f0 refines Harvest's estimate with StoneMask, as RVC does.
        f0, _ = world_f0(
            x,
            SAMPLE_RATE,
            "harvest",
            f0_floor=F0_MIN,
            f0_ceil=F0_MAX,
            frame_period_ms=frame_period_ms,
        )
        return finish(f0, x.shape[0], p_len)


def create(setup: F0Setup) -> HarvestExtractor:
    return HarvestExtractor()
