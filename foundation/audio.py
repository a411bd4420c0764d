"""Small audio helpers shared by the trainer and the converter.

Audio is a 1-D ``float32`` numpy array (mono) at a stated sample rate. Decoding goes through
soundfile (wav/flac/ogg without a subprocess) and falls back to ffmpeg through pydub for
compressed formats soundfile cannot read (mp3 before libsndfile 1.1, m4a/aac, opus in mp4, ...).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from scipy import signal

from foundation.errors import StageError

HIGHPASS_HZ = 48.0
"""RVC removes rumble below 48 Hz before slicing (training) and before pitch/feature extraction."""
HIGHPASS_CHUNK = 1 << 20
"""Samples high-passed at a time (zero-phase, long audio)."""


def _to_mono(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.asarray(audio, dtype=np.float32)


DECODE_BLOCK = 1 << 18
"""Frames decoded at a time: a long file costs its mono array, not its channels in float."""


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as source:
        mono = np.empty(max(int(source.frames), 0), dtype=np.float32)
        at = 0
        for block in source.blocks(blocksize=DECODE_BLOCK, dtype="float32", always_2d=True):
            if at + len(block) > len(mono):  # a header that undercounts: grow (doubling)
                grown = np.empty(max(2 * len(mono), at + len(block)), dtype=np.float32)
                grown[:at] = mono[:at]
                mono = grown
            mono[at : at + len(block)] = _to_mono(block)
            at += len(block)
        return mono[:at], int(source.samplerate)


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    from pydub import AudioSegment

    segment = AudioSegment.from_file(str(path))
    samples = np.asarray(segment.get_array_of_samples(), dtype=np.float32)
    full_scale = float(1 << (8 * segment.sample_width - 1))
    audio = samples.reshape(-1, segment.channels) / full_scale
    return _to_mono(audio), int(segment.frame_rate)


def load_audio(path: Path | str, sr: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sr`` Hz.

    Raises ``StageError('not_audio')`` when neither soundfile nor ffmpeg can decode it and
    ``StageError('empty_audio')`` when it holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError("missing_object", f"audio file not found: {path.name}")
    try:
        audio, file_sr = _decode_soundfile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        try:
            audio, file_sr = _decode_ffmpeg(path)
        except Exception as exc:  # pydub raises CouldntDecodeError, IndexError, OSError, ...
            raise StageError("not_audio", f"{path.name} is not audio ffmpeg can decode") from exc
    if audio.size == 0:
        raise StageError("empty_audio", f"{path.name} has no samples")
    if not np.all(np.isfinite(audio)):
        raise StageError("corrupt_audio", f"{path.name} has non-finite samples")
    return resample(audio, file_sr, sr)


LOWPASS_WIDTH = 64
ROLLOFF = 0.9475937167399596
RESAMPLE_CHUNK = 1 << 20
"""Input samples resampled at a time: a long song costs its output array plus a few MB."""


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
    """Band-limited (windowed sinc) resampling of a 1-D signal; identity when rates agree.

    Long signals go through in chunks: the filter is ``width`` samples long, so each chunk
    taken with that much real signal on both sides (and starting on the rates' common grid)
    gives exactly the samples resampling the whole would.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return audio
    gcd = math.gcd(int(sr_in), int(sr_out))
    step_in, step_out = sr_in // gcd, sr_out // gcd
    width = math.ceil(LOWPASS_WIDTH * step_in / (min(step_in, step_out) * ROLLOFF))
    context = step_in * (math.ceil(width / step_in) + 2)
    chunk = max(1, RESAMPLE_CHUNK // step_in) * step_in
    if len(audio) <= chunk + 2 * context:
        return _resample_whole(audio, sr_in, sr_out)
    total = math.ceil(len(audio) * step_out / step_in)
    out = np.empty(total, dtype=np.float32)
    for first in range(0, len(audio), chunk):
        low = max(0, first - context)
        part = _resample_whole(audio[low : first + chunk + context], sr_in, sr_out)
        skip = (first - low) // step_in * step_out
        at = first // step_in * step_out
        count = min(chunk // step_in * step_out, total - at)
        out[at : at + count] = part[skip : skip + count]
    return out


@lru_cache(maxsize=16)
def _highpass_coefficients(sr: int) -> tuple[np.ndarray, np.ndarray]:
    b, a = signal.butter(N=5, Wn=HIGHPASS_HZ, btype="high", fs=sr)
    return b, a


def highpass_48hz(audio: np.ndarray, sr: int, *, zero_phase: bool = False) -> np.ndarray:
    """5th-order Butterworth high-pass at 48 Hz, as RVC.

    RVC's preprocessing filters causally (``lfilter``: a zero-phase filter rings before
    transients), while its inference pipeline filters forwards and backwards (``filtfilt``);
    ``zero_phase`` picks the latter.
    """
    b, a = _highpass_coefficients(int(sr))
    x = np.asarray(audio)
    # filtfilt needs more samples than 3x the filter order; tiny inputs stay causal.
    if not zero_phase or x.shape[0] <= 3 * max(len(a), len(b)):
        return signal.lfilter(b, a, np.asarray(x, dtype=np.float64)).astype(np.float32)
    # Long audio in pieces, each filtered forwards and backwards with a second of real signal on
    # both sides: the filter's slowest pole (2*pi*48*sin(pi/10) rad/s) decays by about e^-90 over
    # that second, so each piece's core equals what one pass over the whole gives (within 1e-6 of
    # full scale at 16 kHz), without float64 copies of the whole song.
    chunk, context = HIGHPASS_CHUNK, int(sr)
    if x.shape[0] <= chunk + 2 * context:
        return signal.filtfilt(b, a, np.asarray(x, dtype=np.float64)).astype(np.float32)
    out = np.empty(x.shape[0], dtype=np.float32)
    for first in range(0, x.shape[0], chunk):
        low, high = max(0, first - context), min(x.shape[0], first + chunk + context)
        piece = signal.filtfilt(b, a, np.asarray(x[low:high], dtype=np.float64))
        count = min(chunk, x.shape[0] - first)
        out[first : first + count] = piece[first - low : first - low + count]
    return out


def rms_db(audio: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0); -200 dB for empty or all-zero audio."""
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return -200.0
    rms = float(np.sqrt(np.mean(np.square(x))))
    return 20.0 * float(np.log10(max(rms, 1e-10)))
