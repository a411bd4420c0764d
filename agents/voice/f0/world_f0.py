"""WORLD f0 analysis, written once: DIO or Harvest for a first estimate, then StoneMask, which
refines each frame's estimate from the instantaneous frequency (as RVC and WORLD's own examples
do). The ``dio`` and ``harvest`` extractors, the WORLD fallback voice, the mixer's report and the
generated demo audio all call :func:`world_f0`.

``pyworld`` is imported on the first call, not with this module.
"""

from __future__ import annotations

import numpy as np

from schemas.vocabulary import WORLD_TRACKERS, WorldTracker

__all__ = ["WORLD_TRACKERS", "WorldTracker", "refine_f0", "world_f0"]


def _as_world_audio(audio: np.ndarray) -> np.ndarray:
    """pyworld reads a contiguous 1-D float64 array."""
    x = np.ascontiguousarray(audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {x.shape}")
    return x


def refine_f0(audio: np.ndarray, sr: int, f0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """StoneMask: ``f0`` (Hz per frame at ``times``, 0 unvoiced) refined from ``audio``."""
    import pyworld

    return np.asarray(
        pyworld.stonemask(_as_world_audio(audio), np.ascontiguousarray(f0, np.float64), times, sr)
    )


def world_f0(
    audio: np.ndarray,
    sr: int,
    tracker: WorldTracker,
    *,
    f0_floor: float,
    f0_ceil: float,
    frame_period_ms: float,
    dio_speed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(f0, times)``: f0 in Hz per frame (0 unvoiced, float64) refined by StoneMask, and each
    frame's time in seconds, one frame per ``frame_period_ms``.

    ``dio_speed`` is DIO's decimation before its search (1: none); Harvest has no such knob.
    """
    import pyworld

    x = _as_world_audio(audio)
    if tracker == "harvest":
        if dio_speed != 1:
            raise ValueError("dio_speed applies to DIO only")
        f0, times = pyworld.harvest(
            x, sr, f0_floor=f0_floor, f0_ceil=f0_ceil, frame_period=frame_period_ms
        )
    elif tracker == "dio":
        f0, times = pyworld.dio(
            x,
            sr,
            f0_floor=f0_floor,
            f0_ceil=f0_ceil,
            frame_period=frame_period_ms,
            speed=dio_speed,
        )
    else:
        raise ValueError(f"unknown WORLD f0 tracker {tracker!r}: use one of {WORLD_TRACKERS}")
    return refine_f0(x, sr, f0, times), times
