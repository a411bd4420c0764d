"""RVC dataset preprocessing: voice recordings -> short, level-normalised training segments.

The recipe is RVC WebUI v2's ``preprocess``: each file is decoded at the model's sample rate,
high-passed at 48 Hz (causal 5th-order Butterworth), cut at its silences (:class:`SilenceSlicer`:
-42 dB, clips >= 1.5 s, silences >= 0.4 s, 15 ms hop, <= 0.5 s of silence kept), and every clip
is cut into 3.7 s segments that overlap by 0.3 s (the last one of a clip runs to its end, up to
4 s). Each segment is peak-normalised (``x / peak * 0.9 * 0.75 + 0.25 * x``) and written twice:
at the model rate to ``0_gt_wavs/`` (synthesis targets) and at 16 kHz to ``1_16k_wavs/`` (input of
pitch and content-feature extraction), both as ``{file}_{segment}.wav`` float32.

Departures from RVC, all to keep bad input out of training: segments shorter than
:data:`MIN_SEGMENT_S` or quieter than ``silence_dbfs`` are left out (RVC would normalise room
noise up to full level), and a file that cannot be decoded is skipped and reported instead of
ending the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from foundation.audio import highpass_48hz, load_audio
from foundation.errors import StageError
from foundation.levels import rms_db
from foundation.logging import get_logger
from foundation.progress import ProgressFn
from foundation.resample import resample

log = get_logger(__name__)


# The experiment folder, as RVC WebUI lays it out (features.py writes the derived folders).
GT_WAVS_DIR = "0_gt_wavs"
WAVS_16K_DIR = "1_16k_wavs"
F0_COARSE_DIR = "2a_f0"
F0_HZ_DIR = "2b-f0nsf"
FEATURE_DIRS: dict[str, str] = {"v1": "3_feature256", "v2": "3_feature768"}
DERIVED_DIRS = (F0_COARSE_DIR, F0_HZ_DIR, *FEATURE_DIRS.values())
SEGMENT_S = 3.7
OVERLAP_S = 0.3
PEAK = 0.9
PEAK_ALPHA = 0.75
MAX_SANE_PEAK = 2.5
"""A segment peaking above this (full scale is 1.0) is broken audio: skipped, as RVC."""
MIN_SEGMENT_S = 0.5
"""Shorter segments are left out: too little for HuBERT's context and the training window."""
MIN_DATASET_S = 5.0
"""Least total segment audio a dataset must yield (``min_total_s``' default)."""


# --------------------------------------------------------------------------------------------------
# Silence slicing
# --------------------------------------------------------------------------------------------------


def frame_rms(samples: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS of centred frames (zero-padded by half a frame each side), like ``librosa.feature.rms``
    with ``pad_mode='constant'``: frame ``i`` is centred on sample ``i * hop_length``."""
    half = frame_length // 2
    padded = np.pad(np.asarray(samples, dtype=np.float64), (half, half))
    n_frames = 1 + (padded.shape[0] - frame_length) // hop_length
    if n_frames <= 0:
        return np.zeros(0)
    energy = np.concatenate([[0.0], np.cumsum(padded * padded)])
    starts = np.arange(n_frames) * hop_length
    power = (energy[starts + frame_length] - energy[starts]) / frame_length
    return np.sqrt(np.maximum(power, 0.0))


class SilenceSlicer:
    """Cuts audio at silences, keeping at most ``max_sil_kept_ms`` of each silence (RVC's
    ``Slicer``, from audio-slicer by openvpi).

    A silence is a run of frames whose RMS is below ``threshold_db``; it becomes a cut only when
    it lasts ``min_interval_ms`` and the clip before it has ``min_length_ms`` (leading silence is
    always cut). Cut points are placed at the quietest frames of the silence.
    """

    def __init__(
        self,
        sr: int,
        threshold_db: float = -42.0,
        min_length_ms: int = 1500,
        min_interval_ms: int = 400,
        hop_ms: int = 15,
        max_sil_kept_ms: int = 500,
    ) -> None:
        if not min_length_ms >= min_interval_ms >= hop_ms:
            raise ValueError("need min_length_ms >= min_interval_ms >= hop_ms")
        if not max_sil_kept_ms >= hop_ms:
            raise ValueError("need max_sil_kept_ms >= hop_ms")
        min_interval_samples = sr * min_interval_ms / 1000
        self.threshold = 10 ** (threshold_db / 20.0)
        self.hop = round(sr * hop_ms / 1000)
        self.win = min(round(min_interval_samples), 4 * self.hop)
        self.min_length = round(sr * min_length_ms / 1000 / self.hop)
        self.min_interval = round(min_interval_samples / self.hop)
        self.max_sil_kept = round(sr * max_sil_kept_ms / 1000 / self.hop)

    def slice(self, audio: np.ndarray) -> list[np.ndarray]:
        if audio.shape[0] <= self.min_length:
            return [audio]
        rms = frame_rms(audio, self.win, self.hop)
        cuts = self._silences_to_remove(rms)
        if not cuts:
            return [audio]
        total = rms.shape[0]
        bounds: list[tuple[int, int]] = []
        if cuts[0][0] > 0:
            bounds.append((0, cuts[0][0]))
        bounds.extend((cuts[i][1], cuts[i + 1][0]) for i in range(len(cuts) - 1))
        if cuts[-1][1] < total:
            bounds.append((cuts[-1][1], total))
        return [
            audio[begin * self.hop : min(audio.shape[0], end * self.hop)] for begin, end in bounds
        ]

    def _quietest(self, rms: np.ndarray, begin: int, end: int) -> int:
        """Index of the quietest frame in ``rms[begin:end]``."""
        return begin + int(np.argmin(rms[begin:end]))

    def _silences_to_remove(self, rms: np.ndarray) -> list[tuple[int, int]]:
        """(first, last) frame pairs of each silent stretch to cut out."""
        cuts: list[tuple[int, int]] = []
        silence_start: int | None = None
        clip_start = 0
        keep = self.max_sil_kept
        for i, level in enumerate(rms):
            if level < self.threshold:
                if silence_start is None:
                    silence_start = i
                continue
            if silence_start is None:
                continue
            leading = silence_start == 0 and i > keep
            long_enough = (
                i - silence_start >= self.min_interval and i - clip_start >= self.min_length
            )
            if not leading and not long_enough:
                silence_start = None
                continue
            length = i - silence_start
            if length <= keep:
                # Short silence: cut at a single point, its quietest frame.
                pos = self._quietest(rms, silence_start, i + 1)
                cuts.append((0, pos) if silence_start == 0 else (pos, pos))
                clip_start = pos
            elif length <= 2 * keep:
                # Medium: keep up to `keep` frames each side around the quietest middle point.
                pos = self._quietest(rms, i - keep, silence_start + keep + 1)
                pos_l = self._quietest(rms, silence_start, silence_start + keep + 1)
                pos_r = self._quietest(rms, i - keep, i + 1)
                if silence_start == 0:
                    cuts.append((0, pos_r))
                    clip_start = pos_r
                else:
                    cuts.append((min(pos_l, pos), max(pos_r, pos)))
                    clip_start = max(pos_r, pos)
            else:
                # Long: drop the middle, keeping `keep` frames next to the clips.
                pos_l = self._quietest(rms, silence_start, silence_start + keep + 1)
                pos_r = self._quietest(rms, i - keep, i + 1)
                cuts.append((0, pos_r) if silence_start == 0 else (pos_l, pos_r))
                clip_start = pos_r
            silence_start = None
        total = rms.shape[0]
        if silence_start is not None and total - silence_start >= self.min_interval:
            # Trailing silence: cut from its quietest frame (within `keep`) to the end.
            end = min(total, silence_start + keep)
            pos = self._quietest(rms, silence_start, end + 1)
            cuts.append((pos, total + 1))
        return cuts


# --------------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------------


def split_segments(clip: np.ndarray, sr: int) -> list[np.ndarray]:
    """3.7 s windows every 3.4 s; once less than 4 s is left, the rest is the last segment."""
    length = int(SEGMENT_S * sr)
    step = SEGMENT_S - OVERLAP_S
    tail = (SEGMENT_S + OVERLAP_S) * sr
    segments = []
    i = 0
    while True:
        start = int(sr * step * i)
        i += 1
        if clip.shape[0] - start > tail:
            segments.append(clip[start : start + length])
        else:
            segments.append(clip[start:])
            return segments


def normalise_peak(segment: np.ndarray) -> np.ndarray | None:
    """RVC's level normalisation (peak to 0.9, blended 75/25 with the original); None for a
    segment with no usable peak (silent, non-finite, or above :data:`MAX_SANE_PEAK`)."""
    peak = float(np.max(np.abs(segment))) if segment.size else 0.0
    if not np.isfinite(peak) or peak <= 0 or peak > MAX_SANE_PEAK:
        return None
    out = segment / peak * (PEAK * PEAK_ALPHA) + (1 - PEAK_ALPHA) * segment
    return out.astype(np.float32)


@dataclass
class SkippedFile:
    name: str
    reason: str


@dataclass
class PreprocessReport:
    sample_rate: int
    segments: int = 0
    seconds: float = 0.0
    files_used: int = 0
    segments_dropped: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    segment_names: list[str] = field(default_factory=list)


def _clear(folder: Path, pattern: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(pattern):
        stale.unlink()


def preprocess_dataset(
    files: list[Path],
    exp_dir: Path,
    sample_rate: int,
    progress: ProgressFn | None = None,
    *,
    silence_dbfs: float = -60.0,
    min_total_s: float = MIN_DATASET_S,
) -> PreprocessReport:
    """Slice and normalise ``files`` into ``exp_dir/0_gt_wavs`` and ``exp_dir/1_16k_wavs``.

    Files are taken in name order (file ``k`` gives ``k_0.wav``, ``k_1.wav`` ...), so the same
    dataset always gives the same segments. Raises ``StageError('dataset_empty')`` when no file
    holds decodable audio and ``StageError('dataset_too_short')`` when less than
    ``min_total_s`` seconds of non-silent segments remain.
    """
    exp_dir = Path(exp_dir)
    gt_dir, wav16k_dir = exp_dir / GT_WAVS_DIR, exp_dir / WAVS_16K_DIR
    _clear(gt_dir, "*.wav")
    _clear(wav16k_dir, "*.wav")
    # Pitch and features of earlier segments would be taken for the new ones: drop them too.
    for derived in DERIVED_DIRS:
        if (exp_dir / derived).is_dir():
            _clear(exp_dir / derived, "*.npy")
    report = PreprocessReport(sample_rate=sample_rate)
    ordered = sorted((Path(f) for f in files), key=lambda p: (p.name, str(p)))
    if not ordered:
        raise StageError("dataset_empty", "the voice dataset has no files")
    slicer = SilenceSlicer(sample_rate)
    decoded = 0
    for file_index, path in enumerate(ordered):
        if progress:
            progress(file_index / len(ordered), f"slicing {path.name}")
        try:
            audio = load_audio(path, sample_rate)
        except StageError as exc:
            report.skipped.append(SkippedFile(path.name, f"{exc.code}: {exc.message}"))
            log.warning("dataset_file_skipped", file=path.name, reason=exc.code)
            continue
        decoded += 1
        if rms_db(audio) < silence_dbfs:
            report.skipped.append(SkippedFile(path.name, "silent_audio: the file is silent"))
            continue
        written = _write_file_segments(
            audio, file_index, slicer, gt_dir, wav16k_dir, silence_dbfs, report
        )
        if written:
            report.files_used += 1
        else:
            report.skipped.append(SkippedFile(path.name, "no usable segment after slicing"))
    if progress:
        progress(1.0, f"{report.segments} segments")
    if decoded == 0:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in report.skipped[:5])
        raise StageError("dataset_empty", f"no file of the dataset holds audio ({reasons})")
    if report.seconds < min_total_s:
        raise StageError(
            "dataset_too_short",
            f"only {report.seconds:.1f} s of voice remain after slicing "
            f"(at least {min_total_s:.1f} s needed)",
        )
    log.info(
        "dataset_preprocessed",
        segments=report.segments,
        seconds=round(report.seconds, 1),
        files=report.files_used,
        skipped=len(report.skipped),
    )
    return report


def _write_file_segments(
    audio: np.ndarray,
    file_index: int,
    slicer: SilenceSlicer,
    gt_dir: Path,
    wav16k_dir: Path,
    silence_dbfs: float,
    report: PreprocessReport,
) -> int:
    sr = report.sample_rate
    audio = highpass_48hz(audio, sr)
    written = 0
    for clip in slicer.slice(audio):
        for segment in split_segments(clip, sr):
            normalised = None
            if segment.shape[0] >= MIN_SEGMENT_S * sr and rms_db(segment) >= silence_dbfs:
                normalised = normalise_peak(segment)
            if normalised is None:
                report.segments_dropped += 1
                continue
            name = f"{file_index}_{written}"
            sf.write(gt_dir / f"{name}.wav", normalised, sr, subtype="FLOAT")
            sf.write(
                wav16k_dir / f"{name}.wav",
                resample(normalised, sr, 16_000),
                16_000,
                subtype="FLOAT",
            )
            written += 1
            report.segments += 1
            report.seconds += normalised.shape[0] / sr
            report.segment_names.append(name)
    return written
