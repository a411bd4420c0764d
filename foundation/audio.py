"""Decoding audio, and the high-pass RVC applies before slicing and before pitch/feature extraction.

Audio is a 1-D ``float32`` numpy array (mono) at a stated sample rate. Decoding goes through
soundfile (wav/flac/ogg without a subprocess) and falls back to ffmpeg (:func:`decode`) for
compressed formats soundfile cannot read (mp3 before libsndfile 1.1, m4a/aac, opus in mp4, ...).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from foundation.encode import ffmpeg_path, run_tool
from foundation.errors import StageError
from foundation.resample import resample_signal
from foundation.signal import Allocate, DiskSignal, Signal, fit, in_memory

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


DISK_DECODE_FRAMES = 1 << 22
"""A file longer than this (95 s at 44.1 kHz) that needs resampling is decoded into a temporary
file first (:class:`foundation.signal.DiskSignal`): memory then holds the resampled song only."""


def _decode_soundfile(path: Path, sr: int, allocate: Allocate) -> tuple[Signal, int]:
    """Mono float32 at the file's own rate: into ``allocate``'s signal when the rate is already
    ``sr``, else into memory (a temporary file for a long one), to be resampled from."""
    with sf.SoundFile(str(path)) as source:
        frames, file_sr = max(int(source.frames), 0), int(source.samplerate)
        if file_sr != sr:
            allocate = DiskSignal.factory() if frames > DISK_DECODE_FRAMES else in_memory
        mono = allocate(frames)
        at = 0
        for block in source.blocks(blocksize=DECODE_BLOCK, dtype="float32", always_2d=True):
            if not np.all(np.isfinite(block)):
                raise StageError("corrupt_audio", f"{path.name} has non-finite samples")
            if at + len(block) > len(mono):  # a header that undercounts: grow (doubling)
                mono = fit(mono, max(2 * len(mono), at + len(block)))
            mono[at : at + len(block)] = _to_mono(block)
            at += len(block)
        return fit(mono, at), file_sr


def decode(path: Path | str) -> tuple[np.ndarray, int]:
    """Any format ffmpeg reads -> float32 ``(samples, channels)`` and its sample rate."""
    with tempfile.TemporaryDirectory(prefix="singtome-decode-") as tmp:
        target = Path(tmp) / "decoded.wav"
        run_tool(
            [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-i", str(path),
             "-c:a", "pcm_f32le", str(target)]
        )  # fmt: skip
        audio, sample_rate = sf.read(str(target), dtype="float32", always_2d=True)
    return audio, int(sample_rate)


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    try:
        audio, file_sr = decode(path)
    except Exception as exc:  # ffmpeg's failure, or a WAV it wrote that soundfile refuses
        raise StageError("not_audio", f"{path.name} is not audio ffmpeg can decode") from exc
    mono = _to_mono(audio)
    if not np.all(np.isfinite(mono)):
        raise StageError("corrupt_audio", f"{path.name} has non-finite samples")
    return mono, file_sr


def load_audio(path: Path | str, sr: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sr`` Hz.

    Raises ``StageError('not_audio')`` when neither soundfile nor ffmpeg can decode it,
    ``StageError('empty_audio')`` when it holds no samples and ``StageError('corrupt_audio')``
    when a sample is NaN or infinite.
    """
    return np.asarray(load_signal(path, sr))


def load_signal(path: Path | str, sr: int, allocate: Allocate = in_memory) -> Signal:
    """:func:`load_audio` into a signal made by ``allocate``: with
    :meth:`~foundation.signal.DiskSignal.factory`, a long song never sits in memory whole."""
    path = Path(path)
    if not path.is_file():
        raise StageError("missing_object", f"audio file not found: {path.name}")
    decoded: Signal
    try:
        decoded, file_sr = _decode_soundfile(path, sr, allocate)  # checks each block's samples
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        decoded, file_sr = _decode_ffmpeg(path)
    if len(decoded) == 0:
        raise StageError("empty_audio", f"{path.name} has no samples")
    if file_sr == sr:
        if isinstance(decoded, np.ndarray) and allocate is not in_memory:
            target = allocate(len(decoded))
            target[:] = decoded
            return target
        return decoded
    resampled = resample_signal(decoded, file_sr, sr, allocate)
    if isinstance(decoded, DiskSignal):
        decoded.close()
    return resampled


@lru_cache(maxsize=16)
def _highpass_coefficients(sr: int) -> tuple[np.ndarray, np.ndarray]:
    b, a = signal.butter(N=5, Wn=HIGHPASS_HZ, btype="high", fs=sr)
    return b, a


def highpass_48hz(
    audio: np.ndarray, sr: int, *, zero_phase: bool = False, overwrite: bool = False
) -> np.ndarray:
    """5th-order Butterworth high-pass at 48 Hz, as RVC.

    RVC's preprocessing filters causally (``lfilter``: a zero-phase filter rings before
    transients), while its inference pipeline filters forwards and backwards (``filtfilt``);
    ``zero_phase`` picks the latter. ``overwrite`` lets a long 1-D float32 ``audio`` receive
    the zero-phase result in place (one copy of the song fewer in memory).
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
    in_place = overwrite and x.ndim == 1 and x.dtype == np.float32 and x.flags.writeable
    out = x if in_place else np.empty(x.shape[0], dtype=np.float32)
    pending: tuple[int, np.ndarray] | None = None
    for first in range(0, x.shape[0], chunk):
        low, high = max(0, first - context), min(x.shape[0], first + chunk + context)
        piece = signal.filtfilt(b, a, np.asarray(x[low:high], dtype=np.float64))
        # In place, a piece's result is written only once the next piece has read its leading
        # context: that context is still the unfiltered signal.
        if pending is not None:
            out[pending[0] : pending[0] + len(pending[1])] = pending[1]
        count = min(chunk, x.shape[0] - first)
        pending = (first, piece[first - low : first - low + count].astype(np.float32))
    if pending is not None:
        out[pending[0] : pending[0] + len(pending[1])] = pending[1]
    return out
