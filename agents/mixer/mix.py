"""Remix: align the stems, run the vocal effects and the key shift, apply the per-stem gains.

Stems are ``vocals`` (the converted lead vocals), ``accompaniment`` and, when the separator split
them off, ``backing_vocals``. They may come at different sample rates (the converter writes its
model's rate, 32/40/48 kHz; the separator writes the song's) and lengths that differ by a few
hops of rounding. Everything is resampled to the accompaniment's rate and padded to the longest
stem; a length difference beyond :data:`STEM_LENGTH_TOLERANCE_S` means the stems do not belong
together and is an error, not something to paper over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from agents.mixer.effects import apply_chain, get_effect, vocal_chain
from foundation.errors import StageError
from foundation.levels import fit_length
from foundation.logging import get_logger
from foundation.resample import resample
from schemas.events import MixOptions
from schemas.vocabulary import ACCOMPANIMENT, BACKING_VOCALS, STEM_ROLES, VOCALS

log = get_logger(__name__)

# The one place the tolerance is written: more than this between stems is 'stem_mismatch'.
STEM_LENGTH_TOLERANCE_S = 0.5

STEM_NAMES = STEM_ROLES
# The mix is stereo; mono stems are placed in the centre.
CHANNELS = 2


@dataclass
class Stem:
    audio: np.ndarray  # float32, (samples, channels)
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / self.sample_rate


def read_stem(path: Path) -> Stem:
    try:
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise StageError("corrupt_audio", f"cannot read stem {path.name}: {exc}") from None
    if audio.shape[0] == 0:
        raise StageError("empty_audio", f"stem {path.name} has no samples")
    return Stem(audio, int(sample_rate))


def gains_db(mix: MixOptions) -> dict[str, float]:
    return {
        VOCALS: mix.vocals_gain_db,
        BACKING_VOCALS: mix.backing_gain_db,
        ACCOMPANIMENT: mix.accompaniment_gain_db,
    }


def _to_stereo(audio: np.ndarray) -> np.ndarray:
    if audio.shape[1] == CHANNELS:
        return audio
    if audio.shape[1] == 1:
        return np.repeat(audio, CHANNELS, axis=1)
    # More than two channels: fold down to the first two (stems are never surround in practice).
    return audio[:, :CHANNELS]


def align_stems(
    stems: Mapping[str, Stem], sample_rate: int | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Same rate, stereo, same length; raises ``stem_mismatch`` when lengths disagree too much.

    ``sample_rate`` defaults to the accompaniment's (the song's own rate).
    """
    unknown = set(stems) - set(STEM_NAMES)
    if unknown:
        raise ValueError(f"unknown stems {sorted(unknown)}; expected some of {STEM_NAMES}")
    if VOCALS not in stems or ACCOMPANIMENT not in stems:
        raise StageError("missing_object", "the mix needs both vocals and accompaniment")
    rate = sample_rate or stems[ACCOMPANIMENT].sample_rate

    durations = {name: stem.duration_s for name, stem in stems.items()}
    spread = max(durations.values()) - min(durations.values())
    if spread > STEM_LENGTH_TOLERANCE_S:
        listing = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in durations.items())
        raise StageError(
            "stem_mismatch",
            f"stems differ in length by {spread:.2f} s (more than "
            f"{STEM_LENGTH_TOLERANCE_S} s): {listing}",
        )

    aligned = {
        name: _to_stereo(resample(stem.audio, stem.sample_rate, rate))
        for name, stem in stems.items()
    }
    length = max(audio.shape[0] for audio in aligned.values())
    padded = {name: fit_length(audio, length) for name, audio in aligned.items()}
    return padded, rate


def combine(aligned: Mapping[str, np.ndarray], sample_rate: int, mix: MixOptions) -> np.ndarray:
    """The mix before loudness normalisation: effects, key shift, per-stem gain, sum."""
    gains = gains_db(mix)
    key_shift = get_effect("key_shift")
    chain = vocal_chain(mix)
    total = np.zeros_like(next(iter(aligned.values())), dtype=np.float32)
    for name, audio in aligned.items():
        if name == VOCALS:
            audio = apply_chain(chain, audio, sample_rate, mix)
        else:
            audio = key_shift(audio, sample_rate, mix)
        total += audio * np.float32(10 ** (gains[name] / 20))
    log.debug("stems combined", stems=sorted(aligned), effects=[e.name for e in chain])
    return total
