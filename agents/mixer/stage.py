"""The mixer stage as one plain function: stems in, an encoded, loudness-normalised cover out.

Callable from a test, the CLI or a notebook; the Kafka adapter is ``agents/mixer/agent.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agents.mixer.loudness import integrated_loudness, normalise, true_peak_db
from agents.mixer.mix import align_stems, combine, read_stem
from foundation import encode as encoding
from foundation.audio import decode
from foundation.logging import get_logger
from foundation.probe import probe
from foundation.progress import ProgressFn
from schemas.events import MixOptions, OutputOptions
from streams.outputs import OutputParams

log = get_logger(__name__)


class TrackParams(OutputParams):
    """What decides the track besides the stems' bytes and the code version: the mix and the
    output options (format, bitrate, tags)."""

    mix: MixOptions
    output: OutputOptions


@dataclass(frozen=True)
class MixResult:
    path: Path
    format: str
    duration_s: float
    loudness_lufs: float | None  # None: too short or silent to measure
    true_peak_db: float


def _no_progress(fraction: float, message: str) -> None:
    return None


def measure_track(path: Path, fmt: str) -> MixResult:
    """Duration, loudness and true peak of an encoded track, as a listener's decoder sees it.

    Measured on the decoded file rather than the float mix, so a lossy encoder's own level
    changes are in the reported numbers.
    """
    info = probe(path)
    audio, sample_rate = decode(path)
    return MixResult(
        path=path,
        format=fmt,
        duration_s=round(info.duration_s or 0.0, 3),
        loudness_lufs=_rounded(integrated_loudness(audio, sample_rate)),
        true_peak_db=round(true_peak_db(audio), 2),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def mix_track(
    stems: Mapping[str, Path],
    mix: MixOptions,
    output: OutputOptions,
    out_path: Path,
    progress: ProgressFn = _no_progress,
) -> MixResult:
    """Mix ``stems`` (vocals, accompaniment, optional backing_vocals) into ``out_path``.

    Raises StageError 'unsupported_format' before any work, 'stem_mismatch' when the stems'
    lengths disagree beyond the tolerance.
    """
    encoding.check_format(output.format)
    progress(0.05, "reading stems")
    loaded = {name: read_stem(path) for name, path in stems.items()}
    aligned, sample_rate = align_stems(loaded)

    progress(0.2, "effects and stem gains")
    combined = combine(aligned, sample_rate, mix)

    progress(0.6, f"normalising to {mix.target_lufs} LUFS")
    normalised = normalise(combined, sample_rate, mix.target_lufs, mix.true_peak_db)
    if normalised.loudness_lufs is not None and normalised.loudness_lufs < mix.target_lufs - 0.5:
        log.info(
            "true-peak ceiling kept the mix under the loudness target",
            target_lufs=mix.target_lufs,
            loudness_lufs=round(normalised.loudness_lufs, 2),
            ceiling_db=mix.true_peak_db,
        )

    progress(0.8, f"encoding {output.format}")
    encoding.encode(
        normalised.audio,
        sample_rate,
        out_path,
        output.format,
        bitrate=output.bitrate,
        title=output.title,
        artist=output.artist,
    )
    result = measure_track(out_path, output.format)
    progress(1.0, "mixed")
    log.info(
        "track mixed",
        format=result.format,
        duration_s=result.duration_s,
        loudness_lufs=result.loudness_lufs,
        true_peak_db=result.true_peak_db,
    )
    return result
