"""The one resampler: a Kaiser-windowed sinc (torchaudio), close to the soxr_hq of librosa that RVC
uses, along axis 0 of a ``(samples,)`` or ``(samples, channels)`` array.

Every stage and the shared model code resample with :func:`resample`: the converter and the trainer
(to 16 kHz and back), the mixer (stems to the song's rate, the report's analysis rate), the WORLD
fallback and the generated demo audio.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

from foundation.signal import Allocate, Signal, in_memory

LOWPASS_WIDTH = 64
ROLLOFF = 0.9475937167399596
RESAMPLE_CHUNK = 1 << 20
"""Input samples resampled at a time: a long song costs its output array plus a few MB."""


def _empty(length: int) -> np.ndarray:
    return np.empty(length, dtype=np.float32)


def _resample_whole(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    # Kaiser-windowed sinc, close to librosa's soxr_hq that RVC uses.
    out = AF.resample(
        torch.from_numpy(np.ascontiguousarray(audio)),
        sr_in,
        sr_out,
        lowpass_filter_width=LOWPASS_WIDTH,
        rolloff=ROLLOFF,
        resampling_method="sinc_interp_kaiser",
        beta=14.769656459379492,
    )
    return out.numpy().astype(np.float32, copy=False)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited (windowed sinc) resampling along axis 0, as float32; identity when rates agree.

    A ``(samples, channels)`` array is resampled channel by channel.

    Long signals go through in chunks: the filter is ``width`` samples long, so each chunk
    taken with that much real signal on both sides (and starting on the rates' common grid)
    gives exactly the samples resampling the whole would.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return audio
    if audio.ndim == 2:
        channels = [_resample_1d(audio[:, c], sr_in, sr_out) for c in range(audio.shape[1])]
        return np.stack(channels, axis=1) if channels else audio
    return _resample_1d(audio, sr_in, sr_out)


def resample_signal(audio: Signal, sr_in: int, sr_out: int, allocate: Allocate) -> Signal:
    """:func:`resample` of a mono :class:`~foundation.signal.Signal` into one made by
    ``allocate``: a disk signal in, a disk signal out, and only chunks in memory."""
    if sr_in == sr_out:
        return audio
    return _resample_1d(audio, sr_in, sr_out, allocate)


def _resample_1d(audio: Signal, sr_in: int, sr_out: int, allocate: Allocate | None = None) -> Any:
    gcd = math.gcd(int(sr_in), int(sr_out))
    step_in, step_out = sr_in // gcd, sr_out // gcd
    width = math.ceil(LOWPASS_WIDTH * step_in / (min(step_in, step_out) * ROLLOFF))
    context = step_in * (math.ceil(width / step_in) + 2)
    chunk = max(1, RESAMPLE_CHUNK // step_in) * step_in
    if len(audio) <= chunk + 2 * context:
        whole = _resample_whole(audio[:], sr_in, sr_out)
        if allocate is None or allocate is in_memory:
            return whole
        target = allocate(len(whole))
        target[:] = whole
        return target
    total = math.ceil(len(audio) * step_out / step_in)
    out = (allocate or _empty)(total)
    for first in range(0, len(audio), chunk):
        low = max(0, first - context)
        part = _resample_whole(audio[low : first + chunk + context], sr_in, sr_out)
        skip = (first - low) // step_in * step_out
        at = first // step_in * step_out
        count = min(chunk // step_in * step_out, total - at)
        out[at : at + count] = part[skip : skip + count]
    return out
