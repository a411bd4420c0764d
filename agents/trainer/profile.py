"""Learning a WORLD voice profile from a person's recordings (the no-weights fallback voice).

When no HuBERT/ContentVec checkpoint is configured, the trainer cannot train an RVC model; it
learns a :class:`~agents.voice.world.VoiceProfile` instead: the voice's pitch statistics and its
average spectral envelope. It takes seconds, needs no model weights, and is stored as
``profile.npz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agents.voice.world import EnvelopeStats, VoiceProfile, analyse_f0_and_envelope
from foundation.audio import load_audio
from foundation.errors import StageError
from foundation.logging import get_logger
from foundation.progress import ProgressFn

PROFILE_FILE = "profile.npz"
MIN_VOICED_S = 2.0
"""Less voiced audio than this gives averages too noisy to describe a voice."""
MAX_ANALYSIS_SR = 48000


log = get_logger(__name__)


def _no_progress(fraction: float, message: str) -> None:
    return None


def _native_rate(path: Path) -> int:
    """The file's own sample rate, so bandwidth it never had is not averaged in as silence."""
    import soundfile as sf

    try:
        return int(sf.info(str(path)).samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        from foundation.probe import probe

        try:
            return probe(path).sample_rate or 44100
        except (StageError, RuntimeError):
            return 44100


def learn_profile(
    dataset_files: Sequence[Path], progress: ProgressFn = _no_progress, f0_method: str = "fcpe"
) -> VoiceProfile:
    """The voice profile of the person heard in ``dataset_files`` (any audio ffmpeg decodes).

    Raises ``StageError('dataset_empty')`` without files and ``StageError('dataset_too_short')``
    when less than :data:`MIN_VOICED_S` seconds of voiced audio are found.
    """
    if not dataset_files:
        raise StageError("dataset_empty", "the voice dataset has no audio files")
    stats = EnvelopeStats()
    total = len(dataset_files)
    for index, path in enumerate(dataset_files):
        sr = min(_native_rate(Path(path)), MAX_ANALYSIS_SR)
        audio = load_audio(path, sr)

        def file_progress(fraction: float, message: str, index: int = index) -> None:
            progress((index + fraction) / total, f"learning the voice profile ({message})")

        analyse_f0_and_envelope(audio, sr, stats, f0_method, file_progress)
    profile = stats.profile()
    if profile.voiced_s < MIN_VOICED_S:
        raise StageError(
            "dataset_too_short",
            f"only {profile.voiced_s:.1f} s of voiced audio in the dataset; at least "
            f"{MIN_VOICED_S:.0f} s are needed",
        )
    log.info(
        "voice profile learned",
        files=total,
        voiced_s=round(profile.voiced_s, 1),
        f0_median_hz=round(profile.f0_median_hz, 1),
    )
    return profile


def learn_profile_file(
    dataset_files: Sequence[Path],
    out_dir: Path,
    progress: ProgressFn = _no_progress,
) -> Path:
    """:func:`learn_profile`, saved as ``out_dir/profile.npz``; returns the path."""
    return learn_profile(dataset_files, progress).save(Path(out_dir) / PROFILE_FILE)
