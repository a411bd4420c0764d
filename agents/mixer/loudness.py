"""Loudness normalisation with a true-peak ceiling.

Loudness is ITU-R BS.1770-4 integrated loudness (K-weighting, 400 ms blocks, absolute and relative
gates) measured with ``pyloudnorm``. True peak is estimated, as BS.1770-4 Annex 2 suggests, by 4x
oversampling and taking the largest absolute sample.

:func:`normalise` gains the mix to the target loudness, then runs a look-ahead peak limiter so
that the true peak stays under the ceiling; the limiter lowers loudness a little, so the gain before
it is searched for in a few passes. The limiter may take off at most ``MAX_LIMITING_DB``: when
the target needs more (a very peaky mix) the mix ends quieter than asked, and the *measured*
loudness is what is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

# True-peak oversampling keeps scipy's polyphase resampler instead of foundation.resample (the one
# resampler for changing rates), for two measured reasons (2 CPU cores, 44.1 kHz, 4x):
# - speed: one 64k-frame stereo block takes 7.8 ms here and 94 ms through foundation.resample
#   (its 64-zero-crossing sinc is ~12x the work); normalise() on a 4-minute stereo song took
#   7.2 s here and 35.0 s with foundation.resample, for the same loudness and true peak;
# - the top octave: foundation.resample rolls off at 0.948 x Nyquist (like soxr_hq), so a
#   21 kHz tone's true peak reads 8.1 dB low (worst of 9 phases); resample_poly reads it 0.02 dB
#   low, and a true-peak ceiling must not miss peaks that near Nyquist.
OVERSAMPLING = 4
# The limiter aims a little under the ceiling: gain changes between samples can overshoot it by a
# few hundredths of a dB, and a lossy encoder adds its own overshoot.
LIMITER_MARGIN_DB = 0.3
# Long enough that the gain curve does not distort bass notes, short enough not to duck phrases.
LIMITER_WINDOW_MS = 10.0
MAX_PASSES = 6
_PEAK_BLOCK = 1 << 16
# resample_poly's filter reaches 10 input samples either side; a block needs that much context.
_PEAK_CONTEXT = 64
# Most gain reduction the limiter may apply; a peakier mix than that ends under the target.
# A few dB is what a mastering limiter does unnoticed; more audibly flattens the drums.
MAX_LIMITING_DB = 6.0
MIN_SLOPE = 0.05
# Loudness within this of the target counts as reached.
LOUDNESS_TOLERANCE_LU = 0.1


@dataclass(frozen=True)
class Normalised:
    audio: np.ndarray
    loudness_lufs: float | None  # None: too short or too quiet to measure (BS.1770 gate)
    true_peak_db: float


def _as_2d(audio: np.ndarray) -> np.ndarray:
    return audio[:, None] if audio.ndim == 1 else audio


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """BS.1770-4 integrated loudness in LUFS; None when the audio is silent or under one block."""
    audio = _as_2d(audio)
    meter = pyloudnorm.Meter(sample_rate)
    if audio.shape[0] < int(meter.block_size * sample_rate) + 1:
        return None
    loudness = float(meter.integrated_loudness(audio.astype(np.float64)))
    return loudness if np.isfinite(loudness) else None


def _oversampled_peaks(audio: np.ndarray) -> np.ndarray:
    """Largest absolute value of the 4x oversampled signal around each sample, over channels.

    Computed in blocks (with enough context for the interpolation filter at each edge), so a
    15-minute song never holds a 4x-longer float copy in memory.
    """
    audio = _as_2d(audio)
    length = audio.shape[0]
    peaks = np.empty(length, dtype=np.float32)
    for start in range(0, length, _PEAK_BLOCK):
        stop = min(length, start + _PEAK_BLOCK)
        low, high = max(0, start - _PEAK_CONTEXT), min(length, stop + _PEAK_CONTEXT)
        upsampled = resample_poly(audio[low:high], OVERSAMPLING, 1, axis=0)
        # Element-wise maxima over columns and phases: much faster than max(axis=1) on a
        # 2- or 4-wide axis.
        magnitude = np.abs(upsampled[:, 0])
        for channel in range(1, upsampled.shape[1]):
            np.maximum(magnitude, np.abs(upsampled[:, channel]), out=magnitude)
        block = magnitude[(start - low) * OVERSAMPLING : (stop - low) * OVERSAMPLING]
        peaks[start:stop] = np.maximum.reduce(
            [block[phase::OVERSAMPLING] for phase in range(OVERSAMPLING)]
        )
    return peaks


def true_peak_db(audio: np.ndarray) -> float:
    """Estimated true peak in dBTP (4x oversampling); -inf for digital silence."""
    if audio.size == 0:
        return float("-inf")
    peak = float(_oversampled_peaks(audio).max())
    return float(20 * np.log10(peak)) if peak > 0 else float("-inf")


def limit(
    audio: np.ndarray, sample_rate: int, ceiling_db: float, peaks: np.ndarray | None = None
) -> np.ndarray:
    """Look-ahead peak limiter: keeps the oversampled peak at or under ``ceiling_db``.

    The gain each sample needs is held as a running minimum over ±window and then averaged over
    a window half as wide. Every averaged value then comes from minima that include the sample
    itself, so the smooth gain is never above what the sample needs (no overshoot) and it ramps
    down before a peak rather than after it. ``peaks`` may be given when already known.
    """
    audio = _as_2d(audio)
    ceiling = 10 ** (ceiling_db / 20)
    if peaks is None:
        peaks = _oversampled_peaks(audio)
    needed = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    if needed.min() >= 1.0:
        return audio
    half = max(1, int(sample_rate * LIMITER_WINDOW_MS / 1000))
    held = minimum_filter1d(needed, size=2 * half + 1, mode="nearest")
    gain = uniform_filter1d(held, size=half, mode="nearest")
    return (audio * gain[:, None]).astype(np.float32)


def _gain_db(audio: np.ndarray, db: float) -> np.ndarray:
    return (audio * 10 ** (db / 20)).astype(np.float32)


def normalise(
    audio: np.ndarray, sample_rate: int, target_lufs: float, ceiling_db: float
) -> Normalised:
    """Gain to ``target_lufs`` with true peak ≤ ``ceiling_db``; reports what was achieved."""
    audio = _as_2d(audio).astype(np.float32)
    loudness = integrated_loudness(audio, sample_rate)
    if loudness is None:
        # Nothing to measure against: only make sure it does not clip.
        peak = true_peak_db(audio)
        if peak > ceiling_db:
            audio = _gain_db(audio, ceiling_db - peak)
        return Normalised(audio, None, true_peak_db(audio))

    limiter_ceiling = ceiling_db - LIMITER_MARGIN_DB
    # Gain (dB) that would put the true peak right at the limiter's ceiling; beyond it the limiter
    # works, and it may work at most MAX_LIMITING_DB before the mix just stays quieter.
    source, source_peaks = audio, _oversampled_peaks(audio)
    max_gain_db = limiter_ceiling - 20 * np.log10(source_peaks.max()) + MAX_LIMITING_DB

    def limited(gain_db: float) -> tuple[np.ndarray, float | None]:
        # Peaks scale with the gain: no need to oversample again on every pass.
        gain = 10 ** (gain_db / 20)
        out = limit(_gain_db(source, gain_db), sample_rate, limiter_ceiling, source_peaks * gain)
        return out, integrated_loudness(out, sample_rate)

    # Loudness after the limiter rises monotonically with the gain before it, but by less than
    # the gain (the limiter eats part of it): a secant search on that curve finds the gain in a
    # few passes, and every pass limits the original mix once (no limiting of limited audio).
    gain_db = min(target_lufs - loudness, max_gain_db)
    audio, loudness = limited(gain_db)
    previous: tuple[float, float] | None = None
    for _ in range(MAX_PASSES):
        if loudness is None or abs(loudness - target_lufs) <= LOUDNESS_TOLERANCE_LU:
            break
        if previous is None:
            slope = 1.0
        else:
            gain_step, loudness_step = gain_db - previous[0], loudness - previous[1]
            slope = loudness_step / gain_step if gain_step else 1.0
            slope = min(1.0, max(MIN_SLOPE, slope))
        next_gain = min(gain_db + (target_lufs - loudness) / slope, max_gain_db)
        if next_gain == gain_db:
            break  # at the limiting cap: the ceiling wins, the mix stays under target
        previous = (gain_db, loudness)
        gain_db = next_gain
        audio, loudness = limited(gain_db)

    # Safety net: whatever the limiter left above the ceiling goes by plain gain reduction.
    peak = true_peak_db(audio)
    if peak > ceiling_db:
        audio = _gain_db(audio, ceiling_db - peak)
        loudness = integrated_loudness(audio, sample_rate)
        peak = ceiling_db
    return Normalised(audio, loudness, peak)
