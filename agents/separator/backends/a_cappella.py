"""The a cappella "backend": the song is already vocals, so it passes through with a silent band.

Running it through the same chunked writer as real models keeps one code path for stems on disk.
"""

from __future__ import annotations

import numpy as np

from agents.separator.backends.base import Stems


class ACappellaBackend:
    name = "a_cappella"
    stems = ("vocals", "accompaniment")

    def separate(self, audio: np.ndarray) -> Stems:
        return {"vocals": audio, "accompaniment": np.zeros_like(audio)}
