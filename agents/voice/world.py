"""The no-weights fallback voice: WORLD vocoder analysis, a learned voice profile, resynthesis.

Used when no HuBERT/ContentVec checkpoint is configured, so the service converts voices out of the
box. It is much simpler than RVC and sounds like it; events and logs name it ``'world'``.

A :class:`VoiceProfile` holds what this backend can learn from a few minutes of someone's voice:

* log-f0 mean and spread over voiced frames, to pick the octave the converted vocals sing in;
* the long-term average spectral envelope of voiced frames (level-normalised, in dB on a fixed
  frequency grid), which carries the formant positions and spectral tilt of the voice;
* a codebook of the voice's own frame envelope shapes (up to 1024 frames of the dataset);
* the mean aperiodicity (D4C) of voiced frames, how breathy the voice is at each frequency.

Conversion analyses the vocals with WORLD (DIO + StoneMask or Harvest for f0, CheapTrick for the
envelope, D4C for aperiodicity), shifts f0 by whole octaves toward the target (plus the requested
transpose; the melody's intervals are kept exactly, so it stays in key with the accompaniment),
maps each frame's envelope by a frequency warp and a smooth ratio filter fitted between the
source's and the target's average envelopes, gives each voiced frame the shape of its nearest
codebook frames (compared as an analysis at that frame's pitch would see them), moves the
voiced frames' aperiodicity by the difference between the voice's average and the source's, and
resynthesises. Long vocals are processed in
pieces cut at quiet points, so memory does not grow with the length of the song.

Profiles are ``.npz`` files of plain arrays (``np.load(allow_pickle=False)``): nothing is
executed when one is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from agents.voice.f0.world_f0 import WorldTracker, refine_f0, world_f0
from foundation.errors import StageError
from foundation.logging import get_logger
from foundation.progress import ProgressFn
from foundation.resample import resample
from foundation.segments import quiet_cut_points, spans
from foundation.signal import DiskSignal, Signal, blocks, fit, peak
from schemas.vocabulary import WORLD_F0_METHODS

BACKEND = "world"
PROFILE_KIND = "singtome-world-voice-profile"
PROFILE_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1 has no pitch histogram: its mean stands in for the median

FRAME_PERIOD_MS = 5.0
F0_FLOOR_HZ = 50.0
# Above RVC's 1100 Hz: sopranos reach C6 (1047 Hz) and their vibrato goes past it.
F0_CEIL_HZ = 1400.0
# 'fcpe' (default): FCPE's track (its weights ship in torchfcpe) refined by StoneMask, with DIO
# filling frames FCPE leaves unvoiced; DIO and Harvest alone lose high notes.
F0_METHODS = WORLD_F0_METHODS
# Frames this far below a piece's loudest are rests: no pitch there, whatever a tracker says.
F0_LEVEL_FLOOR_DB = 50.0
# The pitch histogram behind a profile's median: 10-cent bins from F0_FLOOR_HZ up.
HISTOGRAM_CENTS = 10.0
HISTOGRAM_BINS = int(1200.0 * math.log2(2000.0 / 50.0) / 10.0) + 1

# Envelopes are stored on one fixed grid so profiles made from audio at any sample rate compare.
GRID_HZ = np.linspace(0.0, 24000.0, 1025)
# Per-frame level is measured here and removed, so loud and quiet passages weigh the shape alike.
LEVEL_BAND_HZ = (100.0, 5000.0)
# Frames quieter than the loudest by more than this are breath or bleed, not the voice.
FRAME_FLOOR_DB = 40.0
# Formant positions are compared where speech has most of its formant energy.
WARP_BAND_HZ = (150.0, 6000.0)
# The warp moves formants (below WARP_FULL_HZ) and fades out by WARP_NONE_HZ: the band above,
# breath and sibilance, keeps its frequencies (a whole-band warp down would leave a hole at the
# top, a warp up would fold it away).
WARP_FULL_HZ = 5000.0
WARP_NONE_HZ = 8000.0
MAX_WARP = 1.25  # ~ the vocal-tract-length spread between adult voices
WARP_STEPS = 61
WARP_PENALTY = 2.0  # prefer no warp when the fit barely improves
MAX_FILTER_DB = 12.0
FILTER_SMOOTH_HZ = 250.0

# Pieces of about this length are analysed and synthesised at a time (bounded memory).
PIECE_S = 15.0
CUT_SEARCH_S = 2.0
MARGIN_S = 0.2
# D4C is the slowest analysis; aperiodicity is smooth in frequency, so 16 kHz is plenty.
APERIODICITY_SR = 16000
APERIODICITY_FLOOR = 1e-6
# The voiced frames' aperiodicity moves by the difference between the voice's average and the
# source's (dB per frequency, smoothed over this band): breathiness is part of a voice.
# bench/quality.py --pairs 3: speaker similarity 0.923 / 0.924 / 0.915 with it, 0.918 / 0.904 /
# 0.919 without; seeds 3-5: 0.906 / 0.953 / 0.925 and 0.910 / 0.926 / 0.915 (sung frames voiced
# 0.99 / 0.91 / 0.97 and 0.99 / 0.86 / 0.92).
APERIODICITY_SMOOTH_HZ = 190.0


log = get_logger(__name__)


def _no_progress(fraction: float, message: str) -> None:
    return None


# --------------------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------------------


def _grid_pair(
    arrays: Any, name: str, path: Path | str, what: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``<name>_db`` and ``<name>_frames`` of a stored profile: both absent (an older profile) or
    both present, on the frequency grid and finite."""
    values, frames = arrays.get(f"{name}_db"), arrays.get(f"{name}_frames")
    if (values is None) != (frames is None) or (
        values is not None
        and (
            values.shape != GRID_HZ.shape
            or frames.shape != GRID_HZ.shape
            or not np.all(np.isfinite(values))
        )
    ):
        raise StageError("invalid_model", f"{Path(path).name}: malformed {what}")
    return values, frames


@dataclass(frozen=True)
class VoiceProfile:
    """What the WORLD backend knows about a voice (see the module docstring)."""

    log_f0_mean: float
    log_f0_std: float
    envelope_db: np.ndarray  # mean level-normalised log envelope on GRID_HZ, dB
    envelope_frames: np.ndarray  # voiced frames that reached each grid frequency
    voiced_s: float
    f0_histogram: np.ndarray | None = None  # voiced frames per HISTOGRAM_CENTS bin
    # Long-term average spectrum of the voice (level-normalised, dB on GRID_HZ; format 2).
    spectrum_db: np.ndarray | None = None
    spectrum_frames: np.ndarray | None = None
    codebook: np.ndarray | None = None  # (n, len(SHAPE_HZ)) envelope shapes of the voice, dB
    # Mean aperiodicity of voiced frames (dB on GRID_HZ, up to APERIODICITY_SR / 2; optional).
    aperiodicity_db: np.ndarray | None = None
    aperiodicity_frames: np.ndarray | None = None

    @property
    def f0_mean_hz(self) -> float:
        return float(math.exp(self.log_f0_mean)) if self.voiced_s > 0 else 0.0

    @property
    def f0_median_hz(self) -> float:
        """The median pitch of the voiced frames (the mean for a format-1 profile)."""
        if self.f0_histogram is None or self.f0_histogram.sum() <= 0:
            return self.f0_mean_hz
        cumulative = np.cumsum(self.f0_histogram)
        middle = int(np.searchsorted(cumulative, cumulative[-1] / 2.0))
        return float(F0_FLOOR_HZ * 2.0 ** ((middle + 0.5) * HISTOGRAM_CENTS / 1200.0))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Through a handle, so numpy does not append a second ".npz".
        with open(path, "wb") as handle:
            np.savez(
                handle,
                kind=np.array(PROFILE_KIND),
                format=np.array(PROFILE_FORMAT, dtype=np.int64),
                grid_hz=GRID_HZ,
                log_f0=np.array([self.log_f0_mean, self.log_f0_std], dtype=np.float64),
                envelope_db=np.asarray(self.envelope_db, dtype=np.float64),
                envelope_frames=np.asarray(self.envelope_frames, dtype=np.float64),
                voiced_s=np.array(self.voiced_s, dtype=np.float64),
                f0_histogram=np.asarray(
                    self.f0_histogram if self.f0_histogram is not None
                    else np.zeros(HISTOGRAM_BINS), dtype=np.float64,
                ),
                spectrum_db=np.asarray(
                    self.spectrum_db if self.spectrum_db is not None else np.zeros_like(GRID_HZ),
                    dtype=np.float64,
                ),
                spectrum_frames=np.asarray(
                    self.spectrum_frames if self.spectrum_frames is not None
                    else np.zeros_like(GRID_HZ), dtype=np.float64,
                ),
                codebook=np.asarray(
                    self.codebook if self.codebook is not None
                    else np.zeros((0, len(SHAPE_HZ))), dtype=np.float64,
                ),
                aperiodicity_db=np.asarray(
                    self.aperiodicity_db if self.aperiodicity_db is not None
                    else np.zeros_like(GRID_HZ), dtype=np.float64,
                ),
                aperiodicity_frames=np.asarray(
                    self.aperiodicity_frames if self.aperiodicity_frames is not None
                    else np.zeros_like(GRID_HZ), dtype=np.float64,
                ),
            )  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | Path) -> VoiceProfile:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise StageError("invalid_model", f"not a WORLD voice profile: {exc}") from None
        if str(arrays.get("kind", "")) != PROFILE_KIND:
            raise StageError("invalid_model", f"{Path(path).name} is not a WORLD voice profile")
        if int(arrays.get("format", -1)) not in READABLE_FORMATS:
            raise StageError(
                "invalid_model", f"WORLD profile format {arrays.get('format')} is not supported"
            )
        grid = arrays.get("grid_hz")
        envelope = arrays.get("envelope_db")
        frames = arrays.get("envelope_frames")
        log_f0 = arrays.get("log_f0")
        if (
            grid is None
            or envelope is None
            or frames is None
            or log_f0 is None
            or grid.shape != GRID_HZ.shape
            or not np.allclose(grid, GRID_HZ)
            or envelope.shape != GRID_HZ.shape
            or frames.shape != GRID_HZ.shape
            or log_f0.shape != (2,)
            or not (np.all(np.isfinite(envelope)) and np.all(np.isfinite(log_f0)))
        ):
            raise StageError("invalid_model", f"{Path(path).name}: malformed WORLD voice profile")
        histogram = arrays.get("f0_histogram")
        if histogram is not None and (
            histogram.shape != (HISTOGRAM_BINS,) or not np.all(np.isfinite(histogram))
        ):
            raise StageError("invalid_model", f"{Path(path).name}: malformed pitch histogram")
        spectrum, spectrum_frames = _grid_pair(arrays, "spectrum", path, "voice spectrum")
        aperiodicity, ap_frames = _grid_pair(arrays, "aperiodicity", path, "aperiodicity")
        return cls(
            log_f0_mean=float(log_f0[0]),
            log_f0_std=float(log_f0[1]),
            envelope_db=envelope.astype(np.float64),
            envelope_frames=frames.astype(np.float64),
            voiced_s=float(arrays.get("voiced_s", 0.0)),
            f0_histogram=None if histogram is None else histogram.astype(np.float64),
            spectrum_db=None if spectrum is None else spectrum.astype(np.float64),
            spectrum_frames=None if spectrum_frames is None else spectrum_frames.astype(float),
            codebook=_checked_codebook(arrays.get("codebook"), path),
            aperiodicity_db=None if aperiodicity is None else aperiodicity.astype(np.float64),
            aperiodicity_frames=None if ap_frames is None else ap_frames.astype(np.float64),
        )


def _checked_codebook(codebook: np.ndarray | None, path: str | Path) -> np.ndarray | None:
    if codebook is None:
        return None
    if (
        codebook.ndim != 2
        or codebook.shape[1] != len(SHAPE_HZ)
        or not np.all(np.isfinite(codebook))
    ):
        raise StageError("invalid_model", f"{Path(path).name}: malformed envelope codebook")
    return codebook.astype(np.float64) if len(codebook) else None


def is_profile_file(path: str | Path) -> bool:
    """True when ``path`` is a WORLD profile (by content, not by name)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "kind" in data.files and str(data["kind"]) == PROFILE_KIND
    except (OSError, ValueError, EOFError):
        return False


# Envelope shapes for retrieval: level-normalised dB at mel-spaced frequencies up to 8 kHz.
SHAPE_HZ = 700.0 * (
    np.power(10.0, np.linspace(np.log10(1 + 80 / 700), np.log10(1 + 8000 / 700), 48)) - 1
)
CODEBOOK_SIZE = 1024
CODEBOOK_MAX_FRAMES = 40_000


def bin_hz(bins: int, sr: int) -> np.ndarray:
    """The frequency of each of the ``bins`` bins of a WORLD spectrum (envelope, aperiodicity) at
    ``sr``: an FFT of ``(bins - 1) * 2`` points."""
    return np.arange(bins) * sr / ((bins - 1) * 2)


def shape_vectors(envelope: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(shapes (frames, len(SHAPE_HZ)) dB, levels dB, bin frequencies)`` of CheapTrick
    envelopes at ``sr``."""
    bins_hz = bin_hz(envelope.shape[1], sr)
    decibels = 10.0 * np.log10(envelope + 1e-16)
    level = decibels[:, _band(bins_hz, LEVEL_BAND_HZ)].mean(axis=1)
    shapes = np.stack([np.interp(SHAPE_HZ, bins_hz, row) for row in decibels]) - level[:, None]
    return shapes, level, bins_hz


def learn_codebook(shapes: np.ndarray, size: int | None = None) -> np.ndarray:
    """At most ``size`` (CODEBOOK_SIZE) of the voice's frame shapes, evenly spaced through the
    dataset: its own frames, not averages of them (centroids blur the formants the search is
    there to restore; on bench/quality.py --pairs 3, 1024 frames give speaker similarity 0.918 /
    0.904 / 0.919 where 96 k-means centroids gave 0.903 / 0.900 / 0.912, and k-means to 1024
    centroids takes minutes on a large dataset)."""
    size = CODEBOOK_SIZE if size is None else size
    shapes = np.asarray(shapes, dtype=np.float64)
    if len(shapes) <= size:
        return shapes
    return shapes[np.unique(np.round(np.linspace(0, len(shapes) - 1, size)).astype(int))]


class EnvelopeStats:
    """Running sums for a profile: log-f0 moments and the average envelope shape, and (unless
    ``codebook`` is False: a song being converted needs no codebook of its own) up to
    CODEBOOK_MAX_FRAMES frame shapes for the codebook."""

    def __init__(self, codebook: bool = True) -> None:
        self.collect_shapes = codebook
        self.envelope_sum = np.zeros_like(GRID_HZ)
        self.envelope_frames = np.zeros_like(GRID_HZ)
        self.log_f0_sum = 0.0
        self.log_f0_sq_sum = 0.0
        self.voiced_frames = 0
        self.f0_histogram = np.zeros(HISTOGRAM_BINS)
        self.spectrum = LongTermSpectrum()
        self.shapes: list[np.ndarray] = []
        self._shape_count = 0
        self.aperiodicity_sum = np.zeros_like(GRID_HZ)
        self.aperiodicity_frames = np.zeros_like(GRID_HZ)

    def add_aperiodicity(self, f0: np.ndarray, aperiodicity: np.ndarray, sr: int) -> None:
        """Add the D4C aperiodicity (at ``sr``) of frames with pitch ``f0`` (0: unvoiced)."""
        voiced = f0 > 0
        if not voiced.any():
            return
        bins_hz = bin_hz(aperiodicity.shape[1], sr)
        decibels = 10.0 * np.log10(np.maximum(aperiodicity[voiced], APERIODICITY_FLOOR))
        reach = 0.98 * sr / 2 >= GRID_HZ
        self.aperiodicity_sum[reach] += np.interp(GRID_HZ[reach], bins_hz, decibels.sum(axis=0))
        self.aperiodicity_frames[reach] += int(voiced.sum())

    def add(self, f0: np.ndarray, envelope: np.ndarray, sr: int) -> None:
        """Add frames: ``f0`` (Hz, 0 unvoiced) and their CheapTrick power envelopes at ``sr``."""
        voiced = f0 > 0
        if not voiced.any():
            return
        log_f0 = np.log(f0[voiced])
        self.log_f0_sum += float(log_f0.sum())
        self.log_f0_sq_sum += float(np.square(log_f0).sum())
        self.voiced_frames += int(voiced.sum())
        bins = np.floor(1200.0 * np.log2(f0[voiced] / F0_FLOOR_HZ) / HISTOGRAM_CENTS)
        np.add.at(self.f0_histogram, np.clip(bins.astype(int), 0, HISTOGRAM_BINS - 1), 1.0)

        bins_hz = bin_hz(envelope.shape[1], sr)
        decibels = 10.0 * np.log10(envelope[voiced] + 1e-16)
        level = decibels[:, _band(bins_hz, LEVEL_BAND_HZ)].mean(axis=1)
        loud = level >= level.max() - FRAME_FLOOR_DB
        shape_sum = (decibels[loud] - level[loud, None]).sum(axis=0)
        # Only frequencies this audio can hold (below its Nyquist) count toward the average.
        reach = 0.98 * sr / 2 >= GRID_HZ
        self.envelope_sum[reach] += np.interp(GRID_HZ[reach], bins_hz, shape_sum)
        self.envelope_frames[reach] += int(loud.sum())
        if (
            self.collect_shapes
            and self._shape_count < CODEBOOK_MAX_FRAMES
            and sr >= 2 * SHAPE_HZ[-1]
        ):
            shapes, _, _ = shape_vectors(envelope[voiced][loud][::2], sr)
            self.shapes.append(shapes[: CODEBOOK_MAX_FRAMES - self._shape_count])
            self._shape_count += len(self.shapes[-1])

    def profile(self, frame_period_ms: float = FRAME_PERIOD_MS) -> VoiceProfile:
        n = self.voiced_frames
        mean = self.log_f0_sum / n if n else 0.0
        variance = self.log_f0_sq_sum / n - mean**2 if n else 0.0
        envelope = np.divide(
            self.envelope_sum,
            self.envelope_frames,
            out=np.zeros_like(self.envelope_sum),
            where=self.envelope_frames > 0,
        )
        return VoiceProfile(
            log_f0_mean=mean,
            log_f0_std=math.sqrt(max(variance, 0.0)),
            envelope_db=envelope,
            envelope_frames=self.envelope_frames.copy(),
            voiced_s=n * frame_period_ms / 1000.0,
            f0_histogram=self.f0_histogram.copy(),
            spectrum_db=self.spectrum.mean_db(),
            spectrum_frames=self.spectrum.frames.copy(),
            codebook=learn_codebook(np.concatenate(self.shapes)) if self.shapes else None,
            aperiodicity_db=np.divide(
                self.aperiodicity_sum,
                self.aperiodicity_frames,
                out=np.zeros_like(self.aperiodicity_sum),
                where=self.aperiodicity_frames > 0,
            ),
            aperiodicity_frames=self.aperiodicity_frames.copy(),
        )


class LongTermSpectrum:
    """The average power spectrum of the loud frames of some audio, each frame's level removed
    first (as for the envelopes), in dB on GRID_HZ: the voice's spectral balance, the band
    above 8 kHz included (where envelopes say little: it is breath, not harmonics)."""

    FFT = 2048

    def __init__(self) -> None:
        self.power_sum = np.zeros_like(GRID_HZ)
        self.frames = np.zeros_like(GRID_HZ)

    def add(self, audio: np.ndarray, sr: int) -> None:
        x = np.asarray(audio, dtype=np.float64)
        if len(x) < self.FFT:
            return
        window = np.hanning(self.FFT)
        bins_hz = np.fft.rfftfreq(self.FFT, 1.0 / sr)
        level_band = _band(bins_hz, LEVEL_BAND_HZ)
        reach = 0.98 * sr / 2 >= GRID_HZ
        starts = np.arange(0, len(x) - self.FFT + 1, self.FFT // 2)
        for block in range(0, len(starts), 256):
            frames = np.stack([x[i : i + self.FFT] for i in starts[block : block + 256]])
            power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 + 1e-20
            level = power[:, level_band].mean(axis=1)
            loud = level >= level.max() * 10.0 ** (-FRAME_FLOOR_DB / 10.0)
            if not loud.any():
                continue
            shape = (power[loud] / level[loud, None]).sum(axis=0)
            self.power_sum[reach] += np.interp(GRID_HZ[reach], bins_hz, shape)
            self.frames[reach] += int(loud.sum())

    def mean_db(self) -> np.ndarray:
        mean = np.divide(
            self.power_sum, self.frames, out=np.zeros_like(self.power_sum), where=self.frames > 0
        )
        return np.where(self.frames > 0, 10.0 * np.log10(np.maximum(mean, 1e-20)), 0.0)


def _band(freqs_hz: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    return (freqs_hz >= band[0]) & (freqs_hz <= band[1])


# --------------------------------------------------------------------------------------------------
# WORLD analysis in pieces
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameGrid:
    """Cut positions must fall on WORLD frame times so the pieces' frames line up with the whole.

    A frame lasts ``sr * 5 ms`` samples, which need not be whole (220.5 at 44.1 kHz); ``step`` is
    the smallest whole number of samples holding a whole number of frames (``frames_per_step``).
    """

    sr: int
    step: int
    frames_per_step: int

    @classmethod
    def for_rate(cls, sr: int) -> FrameGrid:
        per_frame = Fraction(sr) * Fraction(FRAME_PERIOD_MS) / 1000
        return cls(sr=sr, step=per_frame.numerator, frames_per_step=per_frame.denominator)

    @property
    def hop(self) -> float:
        return self.step / self.frames_per_step

    def frame(self, sample: int) -> int:
        return sample // self.step * self.frames_per_step

    def times(self, frames: int) -> np.ndarray:
        return np.arange(frames) * (FRAME_PERIOD_MS / 1000.0)


def _f0(audio: np.ndarray, sr: int, method: str) -> np.ndarray:
    """f0 (Hz, 0 unvoiced) per WORLD frame of ``audio`` with the named tracker."""
    tracker: WorldTracker = "harvest" if method == "harvest" else "dio"
    tracked, times = world_f0(
        audio,
        sr,
        tracker,
        f0_floor=F0_FLOOR_HZ,
        f0_ceil=F0_CEIL_HZ,
        frame_period_ms=FRAME_PERIOD_MS,
    )
    if tracker == "harvest":
        return tracked
    dio = tracked
    if method == "dio":
        return dio
    fcpe = _fcpe_on_world_frames(audio, sr, len(dio))
    # FCPE decides where the voice sings and roughly at what pitch; StoneMask refines it from
    # the signal at full rate; DIO covers what FCPE leaves unvoiced.
    refined = refine_f0(audio, sr, fcpe, times) if np.any(fcpe > 0) else fcpe
    refined = np.where((fcpe > 0) & (refined > 0), refined, fcpe)
    combined = np.where(refined > 0, refined, dio)
    return np.where(_audible(audio, sr, len(dio)), combined, 0.0)


def _audible(audio: np.ndarray, sr: int, frames: int) -> np.ndarray:
    """Frames within :data:`F0_LEVEL_FLOOR_DB` of the loudest (20 ms windows)."""
    window = max(1, int(0.02 * sr))
    centres = (np.arange(frames) * FRAME_PERIOD_MS / 1000.0 * sr).astype(int)
    squares = np.concatenate(([0.0], np.cumsum(np.square(audio, dtype=np.float64))))
    lo = np.clip(centres - window // 2, 0, len(audio))
    hi = np.clip(centres + window // 2, 0, len(audio))
    level = (squares[hi] - squares[lo]) / np.maximum(hi - lo, 1)
    top = float(level.max()) if level.size else 0.0
    return level > top * 10.0 ** (-F0_LEVEL_FLOOR_DB / 10.0) if top > 0 else level > 0


_FCPE_RATE = 16000


def _fcpe_on_world_frames(audio: np.ndarray, sr: int, frames: int) -> np.ndarray:
    """FCPE's 10 ms track moved onto WORLD's 5 ms frames (log-linear between voiced frames)."""
    from agents.voice.f0.fcpe import FcpeExtractor

    global _FCPE
    if _FCPE is None:
        _FCPE = FcpeExtractor(f0_max=F0_CEIL_HZ)
    x16 = resample(np.asarray(audio, dtype=np.float64), sr, _FCPE_RATE).astype(np.float32)
    track = np.asarray(_FCPE.compute(x16), dtype=np.float64)
    if not np.any(track > 0):
        return np.zeros(frames)
    position = np.arange(frames) * FRAME_PERIOD_MS / 10.0
    nearest = np.clip(np.rint(position).astype(int), 0, len(track) - 1)
    voiced = track[nearest] > 0
    indices = np.flatnonzero(track > 0)
    log_f0 = np.interp(position, indices, np.log(track[indices]))
    return np.where(voiced, np.exp(log_f0), 0.0)


_FCPE = None


def _fit_frames(values: np.ndarray, frames: int) -> np.ndarray:
    if len(values) >= frames:
        return values[:frames]
    pad = [(0, frames - len(values))] + [(0, 0)] * (values.ndim - 1)
    return np.pad(values, pad, mode="edge" if len(values) else "constant")


class _Mono:
    """The vocals as float64 mono, zero-padded to ``length`` samples, read by slices: a song of
    any length (an array, or a disk signal) without a float64 copy of the whole of it."""

    def __init__(self, source: Signal | np.ndarray, length: int) -> None:
        self.source = source
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> np.ndarray:
        first, last, _ = key.indices(self.length)
        last = max(first, last)
        have = max(first, min(last, len(self.source)))
        part = np.asarray(self.source[first:have], dtype=np.float64)
        if part.ndim > 1:
            part = part.mean(axis=1)
        if have < last:
            part = np.concatenate([part, np.zeros(last - have)])
        return part


@dataclass
class _Pieces:
    """The padded signal and its quiet-point pieces, with context margins for each."""

    audio: _Mono  # float64 mono, padded to a whole number of steps
    length: int  # samples of the original audio
    grid: FrameGrid
    pieces: list[tuple[int, int]]
    margin: int

    @classmethod
    def split(cls, audio: Signal | np.ndarray, sr: int) -> _Pieces:
        grid = FrameGrid.for_rate(sr)
        length = len(audio)
        padded_length = max(1, math.ceil(length / grid.step)) * grid.step
        signal = _Mono(audio, padded_length)
        cuts = quiet_cut_points(
            signal,  # type: ignore[arg-type]  # read by slices only
            every=int(PIECE_S * sr),
            search=int(CUT_SEARCH_S * sr),
            window=max(1, int(0.02 * sr)),
            align=grid.step,
        )
        margin = math.ceil(MARGIN_S * sr / grid.step) * grid.step
        return cls(signal, length, grid, spans(padded_length, cuts), margin)

    @property
    def total_frames(self) -> int:
        return self.grid.frame(len(self.audio)) + 1

    def context(self, start: int, end: int) -> tuple[int, int]:
        return max(0, start - self.margin), min(len(self.audio), end + self.margin)


def analyse_f0_and_envelope(
    audio: np.ndarray,
    sr: int,
    stats: EnvelopeStats,
    f0_method: str = "fcpe",
    progress: ProgressFn = _no_progress,
) -> np.ndarray:
    """f0 of ``audio`` (Hz per 5 ms frame) while adding its envelope statistics to ``stats``.

    Works piece by piece, so a long recording never holds its whole spectrogram in memory.
    """
    if f0_method not in F0_METHODS:
        raise ValueError(f"WORLD f0 method must be one of {F0_METHODS}")
    return _analyse(_Pieces.split(audio, sr), sr, stats, f0_method, progress)


def _analyse(
    split: _Pieces,
    sr: int,
    stats: EnvelopeStats,
    f0_method: str,
    progress: ProgressFn,
) -> np.ndarray:
    import pyworld

    grid = split.grid
    f0 = np.zeros(split.total_frames)
    last = len(split.audio)
    for index, (start, end) in enumerate(split.pieces):
        low, high = split.context(start, end)
        segment = np.ascontiguousarray(split.audio[low:high])
        frames = grid.frame(high - low) + 1
        segment_f0 = _fit_frames(_f0(segment, sr, f0_method), frames)
        first = grid.frame(start - low)
        count = grid.frame(end - start) + (1 if end == last else 0)
        own_f0 = segment_f0[first : first + count]
        f0[grid.frame(start) : grid.frame(start) + count] = own_f0
        stats.spectrum.add(split.audio[start:end], sr)
        if np.any(own_f0 > 0):
            times = grid.times(frames)
            envelope = pyworld.cheaptrick(segment, segment_f0, times, sr)
            stats.add(own_f0, envelope[first : first + count], sr)
            coarse, coarse_sr = _coarse_aperiodicity(segment, segment_f0, times, sr)
            stats.add_aperiodicity(own_f0, coarse[first : first + count], coarse_sr)
        progress((index + 1) / len(split.pieces), "analysing pitch and timbre")
    return f0


# --------------------------------------------------------------------------------------------------
# Mapping one voice onto another
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeMap:
    """Frequency warp (``> 1`` moves formants up) then a smooth gain in dB on GRID_HZ."""

    warp: float
    filter_db: np.ndarray

    @classmethod
    def identity(cls) -> EnvelopeMap:
        return cls(1.0, np.zeros_like(GRID_HZ))

    def apply(self, envelope: np.ndarray, sr: int) -> np.ndarray:
        """Map CheapTrick power envelopes ``(frames, bins)`` at ``sr``."""
        bins = envelope.shape[1]
        fft_size = (bins - 1) * 2
        bins_hz = bin_hz(bins, sr)
        log_envelope = np.log(envelope + 1e-16)
        if self.warp != 1.0:
            position = np.clip(source_frequency(bins_hz, self.warp) * fft_size / sr, 0, bins - 1)
            below = np.minimum(position.astype(int), bins - 2)
            weight = position - below
            log_envelope = (
                log_envelope[:, below] * (1 - weight) + log_envelope[:, below + 1] * weight
            )
        gain = np.interp(bins_hz, GRID_HZ, self.filter_db) * (math.log(10.0) / 10.0)
        return np.exp(log_envelope + gain[None, :])


def source_frequency(freqs_hz: np.ndarray, warp: float) -> np.ndarray:
    """Where the warp takes each output frequency from: ``f / warp`` up to WARP_FULL_HZ, a
    straight line back to ``f`` itself at WARP_NONE_HZ, and ``f`` above (monotonic)."""
    f = np.asarray(freqs_hz, dtype=np.float64)
    start = WARP_FULL_HZ / warp
    ramp = start + (f - WARP_FULL_HZ) * (WARP_NONE_HZ - start) / (WARP_NONE_HZ - WARP_FULL_HZ)
    return np.where(f <= WARP_FULL_HZ, f / warp, np.where(f >= WARP_NONE_HZ, f, ramp))


def _warped(values: np.ndarray, warp: float) -> np.ndarray:
    return np.interp(source_frequency(GRID_HZ, warp), GRID_HZ, values)


def fit_envelope_map(source: VoiceProfile, target: VoiceProfile) -> EnvelopeMap:
    """The warp and residual filter that move the source's average envelope onto the target's."""
    reach = (source.envelope_frames > 0) & (target.envelope_frames > 0)
    band = reach & _band(GRID_HZ, WARP_BAND_HZ)
    if band.sum() < 16:
        return EnvelopeMap.identity()
    # Errors are weighted per octave (1/f), and level and tilt differences are left to the
    # filter: the warp should explain formant positions only.
    weights = 1.0 / GRID_HZ[band]
    design = np.stack([np.ones(band.sum()), np.log(GRID_HZ[band])], axis=1)
    sqrt_w = np.sqrt(weights)[:, None]
    best_warp, best_error = 1.0, math.inf
    for warp in np.geomspace(1.0 / MAX_WARP, MAX_WARP, WARP_STEPS):
        difference = _warped(source.envelope_db, warp)[band] - target.envelope_db[band]
        coef, *_ = np.linalg.lstsq(design * sqrt_w, difference * sqrt_w[:, 0], rcond=None)
        residual = difference - design @ coef
        error = float(np.sum(weights * residual**2) / np.sum(weights))
        error += WARP_PENALTY * math.log(warp) ** 2 * 100.0
        if error < best_error:
            best_warp, best_error = float(warp), error

    warped_source = _warped(source.envelope_db, best_warp)
    warped_reach = reach & (_warped(source.envelope_frames, best_warp) > 0)
    raw = np.where(warped_reach, target.envelope_db - warped_source, 0.0)
    width = max(1, round(FILTER_SMOOTH_HZ / float(GRID_HZ[1] - GRID_HZ[0])))
    kernel = np.ones(width) / width
    smooth = np.convolve(raw, kernel, mode="same") / np.maximum(
        np.convolve(warped_reach.astype(float), kernel, mode="same"), 1e-9
    )
    filter_db = np.where(warped_reach, np.clip(smooth, -MAX_FILTER_DB, MAX_FILTER_DB), 0.0)
    # Keep the overall loudness: zero mean gain, weighted by where the source has its energy.
    power = np.where(warped_reach, 10.0 ** (warped_source / 10.0), 0.0)
    if power.sum() > 0:
        filter_db -= 10.0 * math.log10(
            float(np.sum(power * 10.0 ** (filter_db / 10.0)) / power.sum())
        )
    return EnvelopeMap(best_warp, filter_db)


def key_shift_semitones(
    source: VoiceProfile, target: VoiceProfile, f0_up_key: int, auto_key: bool
) -> int:
    """Semitones to move the vocals: the requested transpose plus, when ``auto_key``, the whole
    octaves that put the vocals' median pitch nearest the target voice's median.

    Only octaves are added automatically because the vocals are mixed back over an accompaniment
    that is not transposed: any other interval would put the singer out of key. Medians of
    FCPE's pitch (robust to the octave errors and lost high notes of WORLD's trackers) decide.
    """
    source_hz, target_hz = source.f0_median_hz, target.f0_median_hz
    if not auto_key or source.voiced_s <= 0 or target.voiced_s <= 0 or not source_hz > 0:
        return f0_up_key
    distance = math.log2(target_hz / source_hz) - f0_up_key / 12.0
    return f0_up_key + 12 * round(distance)


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------


def _coarse_aperiodicity(
    segment: np.ndarray, f0: np.ndarray, times: np.ndarray, sr: int
) -> tuple[np.ndarray, int]:
    """D4C aperiodicity at ``min(sr, APERIODICITY_SR)``, and that rate."""
    import pyworld

    if sr <= APERIODICITY_SR:
        return np.asarray(pyworld.d4c(segment, f0, times, sr)), sr
    low = resample(segment, sr, APERIODICITY_SR).astype(np.float64)
    return np.asarray(pyworld.d4c(low, f0, times, APERIODICITY_SR)), APERIODICITY_SR


def _aperiodicity(
    segment: np.ndarray, f0: np.ndarray, times: np.ndarray, sr: int, bins: int
) -> np.ndarray:
    import pyworld

    ap_sr = APERIODICITY_SR
    if sr <= ap_sr:
        return np.asarray(pyworld.d4c(segment, f0, times, sr, fft_size=(bins - 1) * 2))
    coarse, _ = _coarse_aperiodicity(segment, f0, times, sr)
    # Spread the 16 kHz analysis over the full band; above 8 kHz the last value holds (voices are
    # almost fully aperiodic there anyway).
    coarse_hz = bin_hz(coarse.shape[1], ap_sr)
    target_hz = bin_hz(bins, sr)
    position = np.interp(target_hz, coarse_hz, np.arange(coarse.shape[1]))
    below = np.minimum(position.astype(int), coarse.shape[1] - 2)
    weight = position - below
    return np.ascontiguousarray(coarse[:, below] * (1 - weight) + coarse[:, below + 1] * weight)


# Frame-by-frame retrieval: each voiced frame's envelope shape moves part of the way
# (RETRIEVAL_RATE; 1: all the way) toward the mean of its nearest shapes among the voice's own
# frames (a codebook learned from the dataset), below RETRIEVAL_TOP_HZ: what one average filter
# cannot give, the voice's own vowel shapes (as RVC's index does with content features).
#
# The search is pitch-aware. A high note's envelope is seen only at its harmonics (700 Hz apart
# for a soprano's A5), so the analysis blurs the formants the dataset's lower notes show sharp;
# compared as they are, a blurred source frame finds the wrong vowels. Each frame is compared
# with the codebook as it would look analysed at that frame's pitch (`degraded_shapes`:
# sampled at the harmonics, interpolated between them, smoothed over 2/3 of f0 in power, as
# CheapTrick does), and takes the sharp shapes of the entries it matches. The retrieved shapes
# are then smoothed over RETRIEVAL_SMOOTH_FRAMES voiced frames (25 ms), so the envelope does
# not jump between neighbours from frame to frame. bench/quality.py --pairs 3, speaker
# similarity per pair:
# 0.877 / 0.857 / 0.890 comparing blurred with sharp shapes (96-entry codebook), 0.899 / 0.882 /
# 0.906 pitch-aware, 0.903 / 0.900 / 0.912 smoothed too, 0.918 / 0.904 / 0.919 with a codebook of
# 1024 of the voice's own frames (learn_codebook).
RETRIEVAL_RATE = 1.0
RETRIEVAL_NEIGHBOURS = 4
RETRIEVAL_TOP_HZ = 7000.0
RETRIEVAL_SMOOTH_FRAMES = 5
# Pitch classes of the degraded codebook: one per semitone of the frames' pitch (after the warp).
RETRIEVAL_PITCH_STEP = 1.0
_DEGRADE_TOP_HZ = 8500.0
_DEGRADE_STEP_HZ = 10.0
_DEGRADE_HZ = np.arange(0.0, _DEGRADE_TOP_HZ + _DEGRADE_STEP_HZ / 2, _DEGRADE_STEP_HZ)


def _interp_matrix(x_new: np.ndarray, x_old: np.ndarray) -> np.ndarray:
    """``M`` with ``M @ y == np.interp(x_new, x_old, y)`` for any ``y`` on ``x_old``."""
    return np.stack([np.interp(x_new, x_old, column) for column in np.eye(len(x_old))], axis=1)


@lru_cache(maxsize=1)
def _from_degrade_grid() -> np.ndarray:
    return _interp_matrix(SHAPE_HZ, _DEGRADE_HZ)


def degraded_shapes(shapes: np.ndarray, f0_hz: float) -> np.ndarray:
    """Envelope shapes (dB on SHAPE_HZ) as a CheapTrick analysis at ``f0_hz`` would see them:
    sampled at the harmonics, linear in dB between them, smoothed over ``2 f0 / 3`` in power."""
    from scipy.ndimage import uniform_filter1d

    harmonics = np.arange(1, int(_DEGRADE_TOP_HZ / f0_hz) + 2) * f0_hz
    sampled = _interp_matrix(_DEGRADE_HZ, harmonics) @ _interp_matrix(harmonics, SHAPE_HZ)
    power = 10.0 ** ((np.asarray(shapes, dtype=np.float64) @ sampled.T) / 10.0)
    width = max(1, int(2.0 * f0_hz / 3.0 / _DEGRADE_STEP_HZ))
    smooth = uniform_filter1d(power, width, axis=1, mode="nearest")
    return 10.0 * np.log10(np.maximum(smooth, 1e-30)) @ _from_degrade_grid().T


def _retrieve(
    shapes: np.ndarray,
    pitch_hz: np.ndarray,
    codebook: np.ndarray,
    degraded: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """For each query shape, the inverse-distance mean of the RETRIEVAL_NEIGHBOURS codebook
    entries nearest to it once degraded to the query's pitch class (``degraded`` keeps the
    degraded codebooks by pitch class from one piece of a song to the next)."""
    from scipy.ndimage import uniform_filter1d

    degraded = {} if degraded is None else degraded
    step = RETRIEVAL_PITCH_STEP
    classes = np.round(12.0 * np.log2(pitch_hz / 440.0) / step).astype(int)
    k = min(RETRIEVAL_NEIGHBOURS, len(codebook))
    retrieved = np.empty_like(shapes)
    for pitch_class in np.unique(classes):
        rows = classes == pitch_class
        if pitch_class not in degraded:
            degraded[pitch_class] = degraded_shapes(
                codebook, 440.0 * 2.0 ** (pitch_class * step / 12.0)
            )
        entries = degraded[pitch_class]
        query = shapes[rows]
        distance = (
            np.square(query).sum(axis=1)[:, None]
            + np.square(entries).sum(axis=1)[None, :]
            - 2.0 * query @ entries.T
        )
        nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
        weight = 1.0 / np.maximum(np.take_along_axis(distance, nearest, axis=1), 1e-6)
        weight /= weight.sum(axis=1, keepdims=True)
        retrieved[rows] = np.einsum("fk,fkd->fd", weight, codebook[nearest])
    if RETRIEVAL_SMOOTH_FRAMES > 1:
        retrieved = uniform_filter1d(retrieved, RETRIEVAL_SMOOTH_FRAMES, axis=0, mode="nearest")
    return retrieved


def _apply_retrieval(
    mapped: np.ndarray,
    f0: np.ndarray,
    sr: int,
    codebook: np.ndarray | None,
    warp: float = 1.0,
    degraded: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """``mapped`` envelopes with their voiced frames' shapes retrieved from ``codebook``;
    ``f0`` is the analysed (source) pitch, and ``warp`` the envelope map's, which spaces the
    harmonics ``f0 * warp`` apart in the mapped envelopes."""
    if codebook is None or len(codebook) == 0 or RETRIEVAL_RATE <= 0:
        return mapped
    voiced = f0 > 0
    if not voiced.any():
        return mapped
    shapes, _, bins_hz = shape_vectors(mapped[voiced], sr)
    retrieved = _retrieve(shapes, f0[voiced] * warp, codebook, degraded)
    change_db = (retrieved - shapes) * RETRIEVAL_RATE
    fade = np.clip((RETRIEVAL_TOP_HZ - bins_hz) / 1000.0, 0.0, 1.0)
    change = np.stack([np.interp(bins_hz, SHAPE_HZ, row) for row in change_db]) * fade
    out = mapped.copy()
    out[voiced] = mapped[voiced] * 10.0 ** (change / 10.0)
    return out


def aperiodicity_gain_db(source: VoiceProfile, target: VoiceProfile) -> np.ndarray:
    """dB per GRID_HZ that moves the source's average aperiodicity of voiced frames onto the
    target voice's (zero where either profile has none; held above their common band)."""
    if (
        source.aperiodicity_db is None
        or target.aperiodicity_db is None
        or source.aperiodicity_frames is None
        or target.aperiodicity_frames is None
    ):
        return np.zeros_like(GRID_HZ)
    reach = (source.aperiodicity_frames > 0) & (target.aperiodicity_frames > 0)
    if reach.sum() < 16:
        return np.zeros_like(GRID_HZ)
    raw = np.interp(
        GRID_HZ, GRID_HZ[reach], (target.aperiodicity_db - source.aperiodicity_db)[reach]
    )
    width = max(1, round(APERIODICITY_SMOOTH_HZ / float(GRID_HZ[1] - GRID_HZ[0])))
    from scipy.ndimage import uniform_filter1d

    return uniform_filter1d(raw, width, mode="nearest")


def _map_aperiodicity(
    aperiodicity: np.ndarray, f0: np.ndarray, sr: int, gain_db: np.ndarray
) -> np.ndarray:
    voiced = f0 > 0
    if not voiced.any() or not np.any(gain_db):
        return aperiodicity
    bins_hz = bin_hz(aperiodicity.shape[1], sr)
    gain = 10.0 ** (np.interp(bins_hz, GRID_HZ, gain_db) / 10.0)
    out = aperiodicity.copy()
    out[voiced] = np.clip(
        np.maximum(aperiodicity[voiced], APERIODICITY_FLOOR) * gain, APERIODICITY_FLOOR, 1.0
    )
    return out


# The balance correction: smooth, bounded, loudness-neutral, and only above EQ_FROM_HZ (fading
# in over 1 kHz): below, the envelope mapping and the retrieval already give the voice's shapes,
# and an average EQ on top blurs them (bench/quality.py, one pair: speaker similarity 0.846
# with the EQ over the whole band, 0.866 from 3 kHz up).
EQ_FROM_HZ = 3000.0
EQ_SMOOTH_HZ = 400.0
EQ_MAX_DB = 18.0
EQ_TAPS = 1023


def spectrum_correction_db(output: LongTermSpectrum, profile: VoiceProfile) -> np.ndarray:
    """dB per GRID_HZ that gives ``output``'s long-term spectrum the profile voice's balance."""
    if profile.spectrum_db is None or profile.spectrum_frames is None:
        return np.zeros_like(GRID_HZ)
    reach = (output.frames > 0) & (profile.spectrum_frames > 0)
    if reach.sum() < 16:
        return np.zeros_like(GRID_HZ)
    raw = np.where(reach, profile.spectrum_db - output.mean_db(), 0.0)
    width = max(1, round(EQ_SMOOTH_HZ / float(GRID_HZ[1] - GRID_HZ[0])))
    kernel = np.ones(width) / width
    smooth = np.convolve(raw, kernel, mode="same") / np.maximum(
        np.convolve(reach.astype(float), kernel, mode="same"), 1e-9
    )
    correction = np.where(reach, np.clip(smooth, -EQ_MAX_DB, EQ_MAX_DB), 0.0)
    correction *= np.clip((GRID_HZ - EQ_FROM_HZ) / 1000.0, 0.0, 1.0)
    # Unchanged loudness: zero gain on average, weighted by where the output has its power.
    power = np.where(reach, 10.0 ** (output.mean_db() / 10.0), 0.0)
    if power.sum() > 0:
        correction -= 10.0 * math.log10(
            float(np.sum(power * 10.0 ** (correction / 10.0)) / power.sum())
        )
    return correction


SPECTRUM_BLOCK = 1 << 18
"""Samples of a song measured and equalised at a time (a multiple of the spectrum's 256-frame
blocks, so measuring piece by piece finds the very frames measuring the whole does)."""


def match_spectrum(audio: np.ndarray, sr: int, profile: VoiceProfile) -> np.ndarray:
    """``audio`` through a linear-phase EQ toward the profile's long-term spectrum."""
    out = np.empty(len(audio))
    _match_spectrum_into(audio, sr, profile, out)
    return out


def _match_spectrum_into(audio: Signal, sr: int, profile: VoiceProfile, out: Signal) -> None:
    """:func:`match_spectrum` from one signal into another, a block at a time: the
    measurement by whole 256-frame blocks, the FIR with its half-length of context."""
    from scipy.signal import firwin2, oaconvolve

    measured = LongTermSpectrum()
    length = len(audio)
    overlap = LongTermSpectrum.FFT // 2  # a block's last frames reach into the next block
    for first in range(0, length, SPECTRUM_BLOCK):
        measured.add(audio[first : min(length, first + SPECTRUM_BLOCK + overlap)], sr)
    correction = spectrum_correction_db(measured, profile)
    if not np.any(correction):
        for first in range(0, length, SPECTRUM_BLOCK):
            out[first : first + SPECTRUM_BLOCK] = audio[first : first + SPECTRUM_BLOCK]
        return
    nyquist = sr / 2.0
    freqs = np.concatenate((GRID_HZ[nyquist > GRID_HZ], [nyquist]))
    gains = 10.0 ** (np.interp(freqs, GRID_HZ, correction) / 20.0)
    taps = firwin2(EQ_TAPS, freqs / nyquist, gains)
    half = EQ_TAPS // 2  # odd taps: 'same' output n reads inputs n - half .. n + half
    for first in range(0, length, SPECTRUM_BLOCK):
        last = min(length, first + SPECTRUM_BLOCK)
        low, high = max(0, first - half), min(length, last + half)
        context = np.concatenate(
            [np.zeros(low - (first - half)), np.asarray(audio[low:high], dtype=np.float64),
             np.zeros(last + half - high)]
        )  # fmt: skip
        out[first:last] = oaconvolve(context, taps, mode="valid")


def convert_world(
    vocals: np.ndarray,
    sr: int,
    profile: VoiceProfile,
    f0_up_key: int = 0,
    auto_key: bool = True,
    progress: ProgressFn = _no_progress,
    f0_method: str = "fcpe",
) -> np.ndarray:
    """Vocals (mono, or ``(samples, channels)`` mixed to mono) sung in the profile's voice.

    Returns mono float32 at ``sr``, the same length as the input.
    """
    converted, _ = convert_world_with_report(
        vocals, sr, profile, f0_up_key, auto_key, progress, f0_method
    )
    return np.asarray(converted)


def convert_world_with_report(
    vocals: Signal | np.ndarray,
    sr: int,
    profile: VoiceProfile,
    f0_up_key: int = 0,
    auto_key: bool = True,
    progress: ProgressFn = _no_progress,
    f0_method: str = "fcpe",
    scratch: str | Path | None = None,
) -> tuple[Signal, WorldReport]:
    """:func:`convert_world`, and what it decided (key and how it was chosen, warp).

    ``vocals`` may be a disk signal; with a ``scratch`` directory the song-length buffers (the
    resynthesis, the EQ's output, the result) are disk signals there too, so memory holds a
    piece at a time, whatever the song's length. Without one the result is a float32 array.
    """
    import pyworld

    if f0_method not in F0_METHODS:
        raise ValueError(f"WORLD f0 method must be one of {F0_METHODS}")
    split = _Pieces.split(vocals, sr)
    stats = EnvelopeStats(codebook=False)  # the source's own codebook is never used
    f0 = _analyse(split, sr, stats, f0_method, lambda f, m: progress(0.4 * f, m))
    source = stats.profile()
    semitones = key_shift_semitones(source, profile, f0_up_key, auto_key)
    mapping = fit_envelope_map(source, profile)
    aperiodicity_gain = aperiodicity_gain_db(source, profile)
    ratio = 2.0 ** (semitones / 12.0)
    log.info(
        "WORLD fallback conversion",
        backend=BACKEND,
        semitones=semitones,
        formant_warp=round(mapping.warp, 3),
        source_median_hz=round(source.f0_median_hz, 1),
        target_median_hz=round(profile.f0_median_hz, 1),
        pieces=len(split.pieces),
    )

    grid = split.grid

    def buffer(length: int, dtype: type) -> Signal:
        if scratch is None:
            return np.zeros(length, dtype=dtype)
        return DiskSignal(length, scratch, dtype)

    out = buffer(len(split.audio), np.float64)
    degraded: dict[int, np.ndarray] = {}  # the codebook by pitch class, for every piece
    for index, (start, end) in enumerate(split.pieces):
        low, high = split.context(start, end)
        segment = np.ascontiguousarray(split.audio[low:high])
        segment_f0 = np.ascontiguousarray(f0[grid.frame(low) : grid.frame(high) + 1])
        times = grid.times(len(segment_f0))
        envelope = pyworld.cheaptrick(segment, segment_f0, times, sr)
        aperiodicity = _aperiodicity(segment, segment_f0, times, sr, envelope.shape[1])
        aperiodicity = np.ascontiguousarray(
            _map_aperiodicity(aperiodicity, segment_f0, sr, aperiodicity_gain)
        )
        mapped = mapping.apply(envelope, sr)
        mapped = np.ascontiguousarray(
            _apply_retrieval(mapped, segment_f0, sr, profile.codebook, mapping.warp, degraded)
        )
        voice = pyworld.synthesize(segment_f0 * ratio, mapped, aperiodicity, sr, FRAME_PERIOD_MS)
        voice = _fit_frames(np.asarray(voice), high - low)
        out[start:end] = voice[start - low : end - low]
        progress(0.4 + 0.6 * (index + 1) / len(split.pieces), "resynthesising in the target voice")

    matched = buffer(split.length, np.float64)
    _match_spectrum_into(fit(out, split.length), sr, profile, matched)
    if isinstance(out, DiskSignal):
        out.close()
    result = buffer(split.length, np.float32)
    loudest = peak(matched)
    factor = 0.99 / loudest if loudest > 0.99 else 1.0
    for first, block in blocks(matched):
        result[first : first + len(block)] = (block * factor if factor != 1.0 else block).astype(
            np.float32
        )
    if isinstance(matched, DiskSignal):
        matched.close()
    report = WorldReport(
        semitones=semitones,
        warp=mapping.warp,
        key_method="auto_octave" if auto_key else "requested",
        source_median_hz=source.f0_median_hz,
        target_median_hz=profile.f0_median_hz,
    )
    return result, report


@dataclass(frozen=True)
class WorldReport:
    """What a WORLD conversion decided, for logs and metrics."""

    semitones: int
    warp: float
    key_method: str = "auto_octave"  # or 'requested' (f0_up_key only)
    source_median_hz: float = 0.0
    target_median_hz: float = 0.0


def plan_world(
    vocals: np.ndarray, sr: int, profile: VoiceProfile, f0_up_key: int = 0, auto_key: bool = True
) -> WorldReport:
    """The key shift and warp :func:`convert_world` would choose (analysis only)."""
    stats = EnvelopeStats()
    analyse_f0_and_envelope(vocals, sr, stats)
    source = stats.profile()
    return WorldReport(
        semitones=key_shift_semitones(source, profile, f0_up_key, auto_key),
        warp=fit_envelope_map(source, profile).warp,
    )
