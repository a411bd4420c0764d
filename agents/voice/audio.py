"""Small audio helpers shared by the trainer and the converter.

Audio is a 1-D ``float32`` numpy array (mono) at a stated sample rate. Decoding goes through
soundfile (wav/flac/ogg without a subprocess) and falls back to ffmpeg through pydub for
compressed formats soundfile cannot read (mp3 before libsndfile 1.1, m4a/aac, opus in mp4, ...).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from scipy import signal

from streams.errors import StageError

HIGHPASS_HZ = 48.0
"""RVC removes rumble below 48 Hz before slicing (training) and before pitch/feature extraction."""


def _to_mono(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.asarray(audio, dtype=np.float32)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return _to_mono(audio), int(sr)


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


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited (windowed sinc) resampling of a 1-D signal; identity when rates agree."""
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return audio
    # Kaiser-windowed sinc, close to librosa's soxr_hq that RVC uses.
    out = AF.resample(
        torch.from_numpy(np.ascontiguousarray(audio)),
        sr_in,
        sr_out,
        lowpass_filter_width=64,
        rolloff=0.9475937167399596,
        resampling_method="sinc_interp_kaiser",
        beta=14.769656459379492,
    )
    return out.numpy().astype(np.float32, copy=False)


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
    x = np.asarray(audio, dtype=np.float64)
    # filtfilt needs more samples than 3x the filter order; tiny inputs stay causal.
    if zero_phase and x.shape[0] > 3 * max(len(a), len(b)):
        return signal.filtfilt(b, a, x).astype(np.float32)
    return signal.lfilter(b, a, x).astype(np.float32)


def rms_db(audio: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0); -200 dB for empty or all-zero audio."""
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return -200.0
    rms = float(np.sqrt(np.mean(np.square(x))))
    return 20.0 * float(np.log10(max(rms, 1e-10)))
