"""'pm': a cheap autocorrelation pitch tracker in numpy, after Boersma (1993) / Praat's
``to_pitch_ac`` that RVC calls through parselmouth (same 0.6 voicing threshold, 50-1100 Hz).

Each 10 ms frame takes a Hann-windowed stretch of three periods of the lowest pitch; its
autocorrelation is divided by the window's own autocorrelation (so long lags are not penalised),
and the best peak in the allowed lag range, refined by parabolic interpolation, gives the pitch.
"""

from __future__ import annotations

import numpy as np

from agents.voice.f0.base import F0_MAX, F0_MIN, HOP, SAMPLE_RATE, F0Setup, as_audio16k, finish

VOICING_THRESHOLD = 0.6
SILENCE_THRESHOLD = 0.03
"""Frames whose peak is below this fraction of the file's peak are unvoiced (Praat's default)."""
OCTAVE_TOLERANCE = 0.9
"""A shorter-lag peak this close to the best one wins: avoids picking a sub-octave."""
_BLOCK = 1024


class PmExtractor:
    name = "pm"

    def __init__(self) -> None:
        self.window_len = round(3 * SAMPLE_RATE / F0_MIN)
        self.window = np.hanning(self.window_len).astype(np.float64)
        self.n_fft = 1 << int(np.ceil(np.log2(2 * self.window_len)))
        window_ac = np.fft.irfft(np.abs(np.fft.rfft(self.window, self.n_fft)) ** 2, self.n_fft)
        self.window_ac = window_ac[: self.window_len] / window_ac[0]
        self.min_lag = int(np.floor(SAMPLE_RATE / F0_MAX))
        self.max_lag = min(int(np.ceil(SAMPLE_RATE / F0_MIN)), self.window_len // 2)

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        x = as_audio16k(audio16k).astype(np.float64)
        n_frames = x.shape[0] // HOP + 1
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak <= 1e-6:
            return finish(np.zeros(n_frames), x.shape[0], p_len)
        half = self.window_len // 2
        padded = np.pad(x, (half, half + self.window_len))
        f0 = np.zeros(n_frames)
        for start in range(0, n_frames, _BLOCK):
            idx = np.arange(start, min(start + _BLOCK, n_frames))
            frames = padded[idx[:, None] * HOP + np.arange(self.window_len)[None, :]]
            f0[idx] = self._frames_pitch(frames, peak)
        return finish(f0, x.shape[0], p_len)

    def _frames_pitch(self, frames: np.ndarray, global_peak: float) -> np.ndarray:
        loud = np.max(np.abs(frames), axis=1) >= SILENCE_THRESHOLD * global_peak
        frames = frames - frames.mean(axis=1, keepdims=True)
        spectrum = np.fft.rfft(frames * self.window, self.n_fft, axis=1)
        ac = np.fft.irfft(np.abs(spectrum) ** 2, self.n_fft, axis=1)[:, : self.window_len]
        energy = ac[:, :1]
        ac = ac / np.where(energy > 0, energy, 1.0) / self.window_ac[None, :]
        lo, hi = self.min_lag, self.max_lag
        seg = ac[:, lo - 1 : hi + 2]
        inner = seg[:, 1:-1]
        is_peak = (inner > seg[:, :-2]) & (inner >= seg[:, 2:])
        strength = np.where(is_peak, inner, -np.inf)
        best = strength.max(axis=1)
        # Earliest peak within the tolerance of the best: the fundamental, not a multiple of it.
        good = strength >= OCTAVE_TOLERANCE * best[:, None]
        pick = np.argmax(good, axis=1)
        rows = np.arange(frames.shape[0])
        left, centre, right = seg[rows, pick], seg[rows, pick + 1], seg[rows, pick + 2]
        denom = left - 2 * centre + right
        offset = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / denom, 0.0)
        lag = lo + pick + np.clip(offset, -0.5, 0.5)
        voiced = loud & np.isfinite(best) & (centre >= VOICING_THRESHOLD)
        return np.where(voiced, SAMPLE_RATE / lag, 0.0)


def create(setup: F0Setup) -> PmExtractor:
    return PmExtractor()
