"""FCPE through torchfcpe, with the weights shipped in the torchfcpe wheel."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from agents.voice.f0.base import (
    F0_MAX,
    F0_MIN,
    SAMPLE_RATE,
    F0Setup,
    as_audio16k,
    finish,
    in_chunks,
    natural_length,
)

THRESHOLD = 0.006
"""Decoder confidence below which a frame is unvoiced (RVC's and torchfcpe's value)."""


class FcpeExtractor:
    name = "fcpe"

    def __init__(self, device: str = "cpu", f0_max: float = F0_MAX) -> None:
        """``f0_max`` above RVC's 1100 Hz suits the WORLD fallback, whose f0 is not quantised."""
        self.device = device
        self.f0_max = f0_max
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from torchfcpe import spawn_bundled_infer_model

            # torchfcpe prints its progress; keep it out of the service's JSON log stream.
            with contextlib.redirect_stdout(io.StringIO()):
                self._model = spawn_bundled_infer_model(device=self.device)
        return self._model

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        x = as_audio16k(audio16k)
        target = natural_length(x.shape[0]) if p_len is None else int(p_len)
        return finish(in_chunks(self._track, x), x.shape[0], target, self.f0_max)

    def _track(self, x: np.ndarray) -> np.ndarray:
        model = self._load()
        audio = torch.from_numpy(x.copy()).to(self.device)[None, :, None]
        with torch.inference_mode():
            f0 = model.infer(
                audio,
                sr=SAMPLE_RATE,
                decoder_mode="local_argmax",
                threshold=THRESHOLD,
                f0_min=F0_MIN,
                f0_max=self.f0_max,
                interp_uv=False,
                output_interp_target_length=natural_length(x.shape[0]),
            )
        return f0.reshape(-1).cpu().numpy()


def create(setup: F0Setup) -> FcpeExtractor:
    return FcpeExtractor(device=setup.device)
