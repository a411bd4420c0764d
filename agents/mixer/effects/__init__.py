"""Mix effects, one module per effect, picked by name.

Implemented with Spotify's ``pedalboard`` (JUCE filters, compressor and Freeverb-style reverb,
Rubber Band time-stretching for the key shift; all in the wheel, nothing fetched at run time).

The vocal chain is high-pass → compressor → light reverb; ``MixOptions.effects = False`` turns it
into the empty chain, which returns its input unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.mixer.effects.base import Effect
from agents.mixer.effects.compressor import Compressor
from agents.mixer.effects.highpass import HighPass
from agents.mixer.effects.key_shift import KeyShift
from agents.mixer.effects.reverb import Reverb
from schemas.events import MixOptions

EFFECTS: dict[str, Effect] = {
    effect.name: effect for effect in (HighPass(), Compressor(), Reverb(), KeyShift())
}

# Order matters: filter the rumble before it drives the compressor; reverb last so its tail is
# not compressed.
VOCAL_CHAIN: tuple[str, ...] = ("highpass", "compressor", "reverb")


def get_effect(name: str) -> Effect:
    try:
        return EFFECTS[name]
    except KeyError:
        raise ValueError(f"unknown mix effect {name!r}; known: {sorted(EFFECTS)}") from None


def vocal_chain(mix: MixOptions) -> list[Effect]:
    """The effects to run on the lead vocals for this job: none when effects are off."""
    if not mix.effects:
        return []
    return [get_effect(name) for name in VOCAL_CHAIN]


def apply_chain(
    chain: Sequence[Effect], audio: np.ndarray, sample_rate: int, mix: MixOptions
) -> np.ndarray:
    for effect in chain:
        audio = effect(audio, sample_rate, mix)
    return audio


__all__ = ["EFFECTS", "VOCAL_CHAIN", "Effect", "apply_chain", "get_effect", "vocal_chain"]
