"""The a cappella "backend": the song is already vocals, so it passes through with a silent band.

Running it through the same chunked writer as real models keeps one code path for stems on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.separator.backends.base import Stems
from schemas.vocabulary import ACCOMPANIMENT, VOCALS


class ACappellaBackend:
    name = "a_cappella"
    stems = (VOCALS, ACCOMPANIMENT)

    def separate(self, audio: np.ndarray) -> Stems:
        return {VOCALS: audio, ACCOMPANIMENT: np.zeros_like(audio)}


def create(model: str, model_dir: Path, device: str) -> ACappellaBackend:
    return ACappellaBackend()
