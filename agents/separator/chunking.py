"""Streaming a long song through a separator in overlapping chunks.

Peak memory depends on the chunk length, not on the song: each chunk is read from the decoded WAV,
separated, and its stems written out at once, keeping only the overlap tail of the previous chunk.
Neighbouring chunks overlap by ``overlap`` frames; in the overlap the earlier chunk fades out and
the later one fades in along a linear ramp. Both chunks estimate the same signal there, so a linear
(equal-gain) cross-fade keeps the level constant; a backend that returns its input unchanged comes
out bit-identical (the two weights sum to one at every sample).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from agents.separator.backends.base import Stems
from foundation.progress import ProgressFn

ReadFn = Callable[[int, int], np.ndarray]
ProcessFn = Callable[[np.ndarray], Stems]
WriteFn = Callable[[str, np.ndarray], None]


def plan_chunks(frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk; consecutive chunks share ``overlap`` frames.

    A chunk is only started when it adds frames beyond the previous chunk's overlap, so the last
    chunk is always longer than the overlap it is blended over.
    """
    if frames <= 0:
        return []
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    if not 0 <= overlap < chunk:
        raise ValueError("overlap must be at least 0 and shorter than a chunk")
    hop = chunk - overlap
    spans = []
    start = 0
    while True:
        stop = min(start + chunk, frames)
        spans.append((start, stop))
        if stop >= frames:
            return spans
        start += hop


def fade_in(length: int) -> np.ndarray:
    """Linear ramp for the overlap, as a column to broadcast over channels; rises from ~0 to ~1."""
    return ((np.arange(length, dtype=np.float64) + 0.5) / length).astype(np.float32)[:, None]


def run_chunked(
    read: ReadFn,
    frames: int,
    process: ProcessFn,
    write: WriteFn,
    chunk: int,
    overlap: int,
    progress: ProgressFn | None = None,
) -> tuple[str, ...]:
    """Separate ``frames`` frames chunk by chunk; ``write(stem, block)`` gets each stem in order.

    Returns the stem names. Every stem receives exactly ``frames`` frames in total.
    """
    overlap = min(overlap, chunk // 2)
    spans = plan_chunks(frames, chunk, overlap)
    tails: Stems = {}
    names: tuple[str, ...] = ()
    for index, (start, stop) in enumerate(spans):
        stems = process(read(start, stop))
        if index == 0:
            names = tuple(stems)
        elif set(stems) != set(names):
            raise RuntimeError(f"stems changed between chunks: {names} then {tuple(stems)}")
        last = stop >= frames
        # Frames shared with the next chunk are held back until that chunk has been blended in.
        keep = 0 if last else overlap
        for name in names:
            block = stems[name]
            if len(block) != stop - start:
                raise RuntimeError(
                    f"stem {name!r} has {len(block)} frames, expected {stop - start}"
                )
            if index > 0 and overlap:
                ramp = fade_in(overlap)
                block = block.copy()
                # tail + ramp * (new - tail): where both chunks agree this is exactly the tail.
                block[:overlap] = tails[name] + ramp * (block[:overlap] - tails[name])
            write(name, block[: len(block) - keep])
            tails[name] = block[len(block) - keep :].copy() if keep else block[:0]
        if progress is not None:
            progress(stop / frames, f"separated chunk {index + 1}/{len(spans)}")
    return names


class WavReader:
    """Random access to frames of a sound file, as float32 ``(n, 2)``."""

    def __init__(self, path: str | Path) -> None:
        self._file = sf.SoundFile(str(path))
        self.frames = self._file.frames
        self.sample_rate = self._file.samplerate

    def read(self, start: int, stop: int) -> np.ndarray:
        self._file.seek(start)
        block = self._file.read(stop - start, dtype="float32", always_2d=True)
        if block.shape[1] == 1:
            block = np.repeat(block, 2, axis=1)
        return block[:, :2]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FlacStemWriter:
    """One FLAC file per stem, appended block by block; files appear under their final name only
    when :meth:`commit` is called, so a crash never leaves a stem that looks complete."""

    def __init__(self, out_dir: Path, sample_rate: int, subtype: str = "PCM_24") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self.subtype = subtype
        self._files: dict[str, sf.SoundFile] = {}

    def partial_path(self, stem: str) -> Path:
        return self.out_dir / f".{stem}.flac.part"

    def final_path(self, stem: str) -> Path:
        return self.out_dir / f"{stem}.flac"

    def write(self, stem: str, block: np.ndarray) -> None:
        handle = self._files.get(stem)
        if handle is None:
            handle = sf.SoundFile(
                str(self.partial_path(stem)), "w", self.sample_rate, block.shape[1], self.subtype,
                format="FLAC",
            )  # fmt: skip
            self._files[stem] = handle
        # Integer FLAC cannot hold overs; clip rather than let libsndfile wrap around.
        handle.write(np.clip(block, -1.0, 1.0))

    def commit(self) -> dict[str, Path]:
        paths = {}
        for stem, handle in self._files.items():
            handle.close()
            self.partial_path(stem).replace(self.final_path(stem))
            paths[stem] = self.final_path(stem)
        self._files.clear()
        return paths

    def abort(self) -> None:
        for stem, handle in self._files.items():
            handle.close()
            self.partial_path(stem).unlink(missing_ok=True)
        self._files.clear()
