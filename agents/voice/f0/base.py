"""What every pitch (f0) extractor shares: the frame grid, the range, and RVC's pitch encodings.

The grid is RVC's: 16 kHz audio, one frame per 160 samples (10 ms), frame ``i`` centred on sample
``160 * i``, so ``n`` samples give ``n // 160 + 1`` frames. f0 is in Hz with 0 for unvoiced
frames, and lies in [:data:`F0_MIN`, :data:`F0_MAX`].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from scipy import signal

SAMPLE_RATE = 16_000
HOP = 160
F0_MIN = 50.0
F0_MAX = 1100.0
F0_BINS = 256
_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)


@runtime_checkable
class F0Extractor(Protocol):
    """A pitch tracker on RVC's 10 ms grid."""

    name: str

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        """Hz per frame (float32), 0 when unvoiced; ``p_len`` frames when given, else
        ``len(audio16k) // 160 + 1``."""
        ...


CrepeModel = Literal["tiny", "full"]


@dataclass(frozen=True)
class F0Setup:
    """What a method may need besides audio: each module's ``create(setup)`` takes what it uses."""

    rmvpe_path: Path | None = None
    device: str = "cpu"
    #: the model size of ``crepe`` (``crepe-tiny`` is always 'tiny'); None: 'full'
    crepe_model: CrepeModel | None = None


def natural_length(n_samples: int) -> int:
    return n_samples // HOP + 1


def as_audio16k(audio16k: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio16k, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
    return audio


def finish(f0: np.ndarray, n_samples: int, p_len: int | None, f0_max: float = F0_MAX) -> np.ndarray:
    """Clean a raw track: non-finite or out-of-range values become unvoiced (0), and the length
    is made ``p_len`` (or the natural length) by trimming or padding unvoiced frames at the end;
    every method here is already on the 10 ms grid, so they differ by a frame or two at most."""
    f0 = np.asarray(f0, dtype=np.float64).reshape(-1).copy()
    f0[~np.isfinite(f0)] = 0.0
    f0[(f0 < F0_MIN) | (f0 > f0_max)] = 0.0
    target = natural_length(n_samples) if p_len is None else int(p_len)
    f0 = f0[:target] if f0.shape[0] >= target else np.pad(f0, (0, target - f0.shape[0]))
    return f0.astype(np.float32)


# Neural trackers (FCPE, RMVPE) hold activations for every frame they are given: a whole song at
# once costs memory in proportion to its length (FCPE: ~1.8 MB per second of audio). They run on
# pieces of CHUNK_S seconds instead, each with CONTEXT_S of audio on both sides so that every kept
# frame sees the same surroundings it would in one pass.
CHUNK_S = 30.0
CONTEXT_S = 2.0


def in_chunks(
    track: Callable[[np.ndarray], np.ndarray],
    audio16k: np.ndarray,
    chunk_s: float = CHUNK_S,
    context_s: float = CONTEXT_S,
) -> np.ndarray:
    """``track`` (audio -> one f0 value per frame of its natural length) run piece by piece.

    A piece starting at sample ``160 * k`` gives frames ``k, k + 1, ...`` of the whole track (the
    grid is the same), so each piece's core frames are copied into place and its context frames
    dropped. Audio no longer than one chunk is tracked in one call, unchanged."""
    x = as_audio16k(audio16k)
    frames = natural_length(x.shape[0])
    chunk = max(1, int(chunk_s * SAMPLE_RATE) // HOP)
    context = int(context_s * SAMPLE_RATE) // HOP
    if frames <= chunk + context:
        return np.asarray(track(x), dtype=np.float32)
    f0 = np.zeros(frames, dtype=np.float32)
    for first in range(0, frames, chunk):
        last = min(first + chunk, frames)
        start = max(0, first - context)
        stop = min(x.shape[0], (last + context) * HOP)
        piece = np.asarray(track(x[start * HOP : stop]), dtype=np.float32)
        offset = first - start
        kept = piece[offset : offset + (last - first)]
        f0[first : first + len(kept)] = kept
    return f0


def coarse_f0(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's 1..255 pitch index: mel-scaled between 50 and 1100 Hz; unvoiced (0 Hz) maps to 1."""
    f0_mel = 1127.0 * np.log(1.0 + np.asarray(f0_hz, dtype=np.float64) / 700.0)
    voiced = f0_mel > 0
    f0_mel[voiced] = (f0_mel[voiced] - _MEL_MIN) * (F0_BINS - 2) / (_MEL_MAX - _MEL_MIN) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > F0_BINS - 1] = F0_BINS - 1
    return np.rint(f0_mel).astype(np.int64)


def shift_f0(f0: np.ndarray, semitones: float) -> np.ndarray:
    """Transpose by ``semitones`` (unvoiced frames stay 0)."""
    return (np.asarray(f0, dtype=np.float32) * np.float32(2.0 ** (semitones / 12.0))).astype(
        np.float32
    )


def median_filter_f0(f0: np.ndarray, radius: int) -> np.ndarray:
    """Median over ``2 * radius + 1`` frames (radius 0: unchanged).

    RVC's ``filter_radius`` option (>= 3) applies a 3-frame median to harvest's track, which is
    ``median_filter_f0(f0, 1)``.
    """
    f0 = np.asarray(f0, dtype=np.float32)
    if radius <= 0 or f0.size == 0:
        return f0.copy()
    return signal.medfilt(f0, kernel_size=2 * int(radius) + 1).astype(np.float32)


def interpolate_unvoiced(f0: np.ndarray) -> np.ndarray:
    """Fill unvoiced (0) frames from their voiced neighbours, exactly as RVC's current pipeline
    does for every tracker (``interpolate_f0`` of its F0 predictors), quirks included:

    * a gap between two voiced frames is a ramp that reaches the next voiced value one frame
      early (step ``(next - previous) / gap``);
    * leading unvoiced frames take the first voiced value;
    * the trailing gap, and a gap whose next voiced frame is the very last one, hold the last
      voiced value up to the end (that final frame included); with no voiced frame before
      them they stay 0.
    """
    values = np.asarray(f0, dtype=np.float32).reshape(-1).copy()
    n = values.size
    unvoiced = values <= 0.0
    if n == 0 or not unvoiced.any():
        return values
    # Runs of unvoiced frames: [start, end) with ``end`` the next voiced frame (or n).
    edges = np.diff(np.concatenate(([0], unvoiced.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        previous = float(values[start - 1]) if start > 0 else 0.0
        if end >= n - 1:  # no voiced frame follows, or only the last one: hold to the end
            values[start:] = previous
            break
        following = float(values[end])
        if start == 0:
            values[:end] = following
        else:
            step = (following - previous) / (end - start)
            values[start:end] = previous + step * np.arange(1, end - start + 1, dtype=np.float64)
    return values
