"""RVC feature extraction: pitch and content features of every 16 kHz training segment.

For each ``1_16k_wavs/<seg>.wav`` written by :mod:`agents.trainer.preprocess` this writes, with
RVC WebUI's folder and file names (so an experiment folder is interchangeable with RVC's):

* ``2b-f0nsf/<seg>.wav.npy``: f0 in Hz per 10 ms frame (0 = unvoiced), ``n // 160 + 1`` frames,
  float32 (the NSF source's pitch);
* ``2a_f0/<seg>.wav.npy``: the same as RVC's coarse 1..255 pitch index, int64 (pitch embedding);
* ``3_feature768/<seg>.npy`` (v2) or ``3_feature256/<seg>.npy`` (v1): HuBERT/ContentVec features,
  ``(frames, 768 | 256)`` float32 at 50 frames/s, ``(n - 400) // 320 + 1`` frames.

A segment whose outputs all exist is not recomputed (resuming an interrupted job); a segment that
fails (NaN features, an extractor error) is reported and left without outputs, so
:func:`list_training_segments` leaves it out of training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch

from agents.trainer.preprocess import (
    F0_COARSE_DIR,
    F0_HZ_DIR,
    FEATURE_DIRS,
    GT_WAVS_DIR,
    WAVS_16K_DIR,
)
from agents.voice.content import ContentEncoder
from agents.voice.f0 import CrepeModel, F0Extractor, coarse_f0, get_f0_extractor
from foundation.errors import StageError
from foundation.logging import get_logger
from foundation.progress import ProgressFn

log = get_logger(__name__)

FeatureVersion = Literal["v1", "v2"]


@dataclass(frozen=True)
class SegmentFiles:
    """Every file of one training segment, by RVC's naming."""

    name: str
    gt_wav: Path
    wav16k: Path
    f0_coarse: Path
    f0_hz: Path
    features: Path

    @classmethod
    def of(cls, exp_dir: Path, name: str, version: FeatureVersion) -> SegmentFiles:
        exp_dir = Path(exp_dir)
        return cls(
            name=name,
            gt_wav=exp_dir / GT_WAVS_DIR / f"{name}.wav",
            wav16k=exp_dir / WAVS_16K_DIR / f"{name}.wav",
            f0_coarse=exp_dir / F0_COARSE_DIR / f"{name}.wav.npy",
            f0_hz=exp_dir / F0_HZ_DIR / f"{name}.wav.npy",
            features=exp_dir / FEATURE_DIRS[version] / f"{name}.npy",
        )


def segment_names(exp_dir: Path) -> list[str]:
    """Names of the 16 kHz segments in ``exp_dir``, in order."""
    return sorted(p.stem for p in (Path(exp_dir) / WAVS_16K_DIR).glob("*.wav"))


def list_training_segments(
    exp_dir: Path, version: FeatureVersion, *, with_f0: bool = True
) -> list[SegmentFiles]:
    """Segments that have every file training needs (RVC's ``filelist.txt`` rows)."""
    ready = []
    for name in segment_names(exp_dir):
        files = SegmentFiles.of(exp_dir, name, version)
        needed = [files.gt_wav, files.features]
        if with_f0:
            needed += [files.f0_coarse, files.f0_hz]
        if all(p.is_file() for p in needed):
            ready.append(files)
    return ready


@dataclass
class FeaturesReport:
    segments: int = 0
    f0_written: int = 0
    features_written: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _read_16k(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != 16_000:
        raise ValueError(f"{path.name} is {sr} Hz, not 16 kHz")
    return audio.mean(axis=1)


def extract_features(
    exp_dir: Path,
    f0_method: str | F0Extractor | None,
    encoder: ContentEncoder | None,
    version: FeatureVersion,
    progress: ProgressFn | None = None,
    *,
    rmvpe_path: Path | None = None,
    device: str = "cpu",
    crepe_model: CrepeModel | None = None,
    overwrite: bool = False,
) -> FeaturesReport:
    """Pitch (unless ``f0_method`` is None: a pitchless model) and content features (unless
    ``encoder`` is None) of every segment in ``exp_dir/1_16k_wavs``.

    ``f0_method`` is a method name for :func:`agents.voice.f0.get_f0_extractor` (``rmvpe_path``,
    ``device`` and ``crepe_model`` go with it) or an extractor already built. Raises
    ``StageError('dataset_too_short')`` when there are no segments or none could be processed.
    """
    if version not in FEATURE_DIRS:
        raise ValueError(f"feature version must be 'v1' or 'v2', not {version!r}")
    exp_dir = Path(exp_dir)
    names = segment_names(exp_dir)
    if not names:
        raise StageError("dataset_too_short", f"no preprocessed segments in {exp_dir}")
    extractor: F0Extractor | None
    if isinstance(f0_method, str):
        extractor = get_f0_extractor(
            f0_method, rmvpe_path=rmvpe_path, device=device, crepe_model=crepe_model
        )
    else:
        extractor = f0_method
    for folder in (F0_COARSE_DIR, F0_HZ_DIR, FEATURE_DIRS[version]):
        (exp_dir / folder).mkdir(parents=True, exist_ok=True)

    report = FeaturesReport(segments=len(names))
    for i, name in enumerate(names):
        if progress:
            progress(i / len(names), f"features of {name}")
        files = SegmentFiles.of(exp_dir, name, version)
        want_f0 = extractor is not None and (
            overwrite or not (files.f0_hz.is_file() and files.f0_coarse.is_file())
        )
        want_features = encoder is not None and (overwrite or not files.features.is_file())
        if not want_f0 and not want_features:
            report.reused += 1
            continue
        try:
            audio = _read_16k(files.wav16k)
            if want_f0:
                assert extractor is not None
                f0 = extractor.compute(audio)
                np.save(files.f0_hz, f0.astype(np.float32), allow_pickle=False)
                np.save(files.f0_coarse, coarse_f0(f0), allow_pickle=False)
                report.f0_written += 1
            if want_features:
                assert encoder is not None
                feats = encoder.extract(torch.from_numpy(audio), version).cpu().numpy()
                if feats.shape[0] == 0 or not np.all(np.isfinite(feats)):
                    raise ValueError("content features are empty or not finite")
                np.save(files.features, feats.astype(np.float32), allow_pickle=False)
                report.features_written += 1
        except (ValueError, RuntimeError, OSError, sf.LibsndfileError) as exc:
            # One bad segment must not sink the dataset: drop its partial outputs, go on.
            for partial in (files.f0_hz, files.f0_coarse, files.features):
                partial.unlink(missing_ok=True)
            report.failed.append((name, str(exc)))
            log.warning("segment_features_failed", segment=name, error=str(exc))
    if progress:
        progress(1.0, f"features of {len(names)} segments")
    if len(report.failed) == len(names):
        raise StageError(
            "dataset_too_short",
            f"no segment could be processed (first error: {report.failed[0][1]})",
        )
    log.info(
        "features_extracted",
        segments=report.segments,
        f0=report.f0_written,
        features=report.features_written,
        reused=report.reused,
        failed=len(report.failed),
        f0_method=getattr(extractor, "name", None),
        version=version,
    )
    return report
