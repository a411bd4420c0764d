"""Where to cut long vocals: at the quietest point near each regular interval.

Both voice backends convert long inputs piece by piece so memory stays bounded. Cutting inside a
sung note would leave a click or a phase jump at the join; cutting where the voice is quietest
(a breath, a consonant, a pause) hides it. This is RVC's recipe: a moving sum of |x| over one
analysis window, and around every ``every`` samples the minimum within ``± search`` samples.
"""

from __future__ import annotations

import itertools

import numpy as np


def moving_abs_sum(audio: np.ndarray, window: int) -> np.ndarray:
    """Sum of |x| over ``window`` samples centred on each sample (same length as ``audio``)."""
    magnitude = np.abs(np.asarray(audio, dtype=np.float64))
    padded = np.pad(magnitude, (window // 2, window - window // 2), mode="constant")
    cumulative = np.concatenate(([0.0], np.cumsum(padded)))
    return cumulative[window : window + len(magnitude)] - cumulative[: len(magnitude)]


def quiet_cut_points(
    audio: np.ndarray, every: int, search: int, window: int, align: int = 1
) -> list[int]:
    """Sample positions to cut ``audio`` at: one near each multiple of ``every``.

    Each cut is the quietest position within ``± search`` samples of the multiple, rounded down
    to a multiple of ``align`` (so frame grids of the pieces line up with the whole). Cuts are
    strictly increasing and lie strictly inside the audio; none is returned for short audio.
    """
    if every <= 0 or search < 0 or window <= 0 or align <= 0:
        raise ValueError("every, window and align must be positive, search non-negative")
    length = len(audio)
    if length <= every + search:
        return []
    cuts: list[int] = []
    half = window // 2
    for centre in range(every, length - search, every):
        low, high = max(0, centre - search), min(length, centre + search + 1)
        # The moving sum around this centre only, from the samples it reads: a long song never
        # has a float64 energy curve of its whole length in memory.
        first, last = max(0, low - half), min(length, high + window - half)
        energy = moving_abs_sum(audio[first:last], window)[low - first : high - first]
        cut = (low + int(np.argmin(energy))) // align * align
        if 0 < cut < length and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    return cuts


def spans(length: int, cuts: list[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` pieces between the cuts, covering ``0..length``."""
    edges = [0, *cuts, length]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]
