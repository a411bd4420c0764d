"""Levels and lengths: RMS, the loudest window (silence is judged by it), sample peak, and fitting
an array to a length (trim or zero-pad along axis 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from foundation.errors import StageError

BLOCK_FRAMES = 1 << 16
LEVEL_WINDOW_S = 1.0
"""Silence is judged per window of this many seconds: one loud second makes a song not silent."""


def rms_db(audio: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0); -200 dB for empty or all-zero audio."""
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return -200.0
    rms = float(np.sqrt(np.mean(np.square(x))))
    return 20.0 * float(np.log10(max(rms, 1e-10)))


def peak_db(audio: np.ndarray) -> float:
    """Sample peak in dBFS; ``-inf`` for empty or all-zero audio."""
    peak = float(np.abs(audio).max()) if np.size(audio) else 0.0
    return 20 * float(np.log10(peak)) if peak > 0 else float("-inf")


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad ``audio`` along axis 0 to exactly ``length`` rows."""
    if audio.shape[0] >= length:
        return audio[:length]
    pad = [(0, length - audio.shape[0])] + [(0, 0)] * (audio.ndim - 1)
    return np.pad(audio, pad)


def read_blocks(path: str | Path, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Yield ``(frames, channels)`` float32 blocks of a sound file, in order."""
    with sf.SoundFile(str(path)) as handle:
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block


def loudest_window_dbfs(path: str | Path, sample_rate: int) -> float:
    """RMS level (dBFS) of the loudest ``LEVEL_WINDOW_S`` window, read block by block.

    Raises ``invalid_audio`` at the first NaN or infinite sample (a float WAV can hold them and
    ffmpeg passes them on): they would poison every stage after this one.
    """
    window = max(1, int(LEVEL_WINDOW_S * sample_rate))
    loudest = 0.0
    for index, block in enumerate(read_blocks(path, window)):
        finite = np.isfinite(block)
        if not finite.all():
            frame = index * window + int(np.argmin(finite.all(axis=1)))
            raise StageError(
                "invalid_audio",
                f"the audio holds a NaN or infinite sample (at {frame / sample_rate:.3f} s)",
            )
        loudest = max(loudest, float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))))
    return 20.0 * math.log10(loudest) if loudest > 0 else -math.inf
