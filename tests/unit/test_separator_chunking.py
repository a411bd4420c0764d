"""Chunked separation: chunk plans, exact reassembly, click-free joins, streamed FLAC stems."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agents.separator.backends import Stems
from agents.separator.chunking import FlacStemWriter, WavReader, plan_chunks, run_chunked
from agents.separator.stage import separate_stream
from frontends import demo_audio as synth
from streams.settings import SeparatorSettings


def _run_in_memory(
    audio: np.ndarray, process: object, chunk: int, overlap: int
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Run the chunker over an array; returns the joined stems and the length of each read."""
    out: dict[str, list[np.ndarray]] = {}
    reads: list[int] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append(stop - start)
        return audio[start:stop]

    def write(name: str, block: np.ndarray) -> None:
        out.setdefault(name, []).append(block)

    run_chunked(read, len(audio), process, write, chunk, overlap)  # type: ignore[arg-type]
    return {name: np.concatenate(blocks) for name, blocks in out.items()}, reads


def _identity(audio: np.ndarray) -> Stems:
    return {"vocals": audio.copy(), "accompaniment": -audio}


@pytest.mark.parametrize(
    ("frames", "chunk", "overlap"),
    [
        (1000, 300, 50),
        (900, 300, 0),
        (1000, 1000, 100),
        (250, 300, 50),
        (1001, 300, 100),
        (7, 3, 1),
    ],
)
def test_plan_covers_every_frame_with_the_overlap(frames: int, chunk: int, overlap: int) -> None:
    spans = plan_chunks(frames, chunk, overlap)
    assert spans[0][0] == 0
    assert spans[-1][1] == frames
    for (start, stop), (next_start, _) in itertools.pairwise(spans):
        assert stop - start == chunk
        assert stop - next_start == overlap
    # The last chunk is always longer than the overlap it is blended over.
    assert spans[-1][1] - spans[-1][0] > (overlap if len(spans) > 1 else 0)


def test_plan_refuses_an_overlap_as_long_as_a_chunk() -> None:
    with pytest.raises(ValueError):
        plan_chunks(100, 10, 10)


@pytest.mark.parametrize(
    ("frames", "chunk", "overlap"),
    [
        (44100, 10000, 2000),
        (44100, 44100, 2000),
        (30000, 44100, 2000),
        (40000, 10000, 0),
        (40001, 9999, 4000),
    ],
)
def test_identity_through_the_chunker_is_exact(frames: int, chunk: int, overlap: int) -> None:
    audio = np.random.default_rng(frames).uniform(-1, 1, (frames, 2)).astype(np.float32)
    stems, reads = _run_in_memory(audio, _identity, chunk, overlap)
    assert set(stems) == {"vocals", "accompaniment"}
    np.testing.assert_array_equal(stems["vocals"], audio)
    np.testing.assert_array_equal(stems["accompaniment"], -audio)
    assert max(reads) <= chunk  # the model never sees more than one chunk


def test_cross_fade_has_no_clicks() -> None:
    """A model whose output level differs from chunk to chunk must still join smoothly."""
    sr = 44100
    t = np.arange(4 * sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 217.3 * t)).astype(np.float32)
    audio = np.stack([tone, tone], axis=1)
    gains = iter([1.0, 0.6, 1.2, 0.7, 1.1, 0.8, 1.0, 0.9])

    def uneven(block: np.ndarray) -> Stems:
        return {"vocals": block * next(gains)}

    def biggest_jump(chunk: int, overlap: int) -> float:
        nonlocal gains
        gains = iter([1.0, 0.6, 1.2, 0.7, 1.1, 0.8, 1.0, 0.9])
        stems, _ = _run_in_memory(audio, uneven, chunk, overlap)
        return float(np.max(np.abs(np.diff(stems["vocals"][:, 0]))))

    smooth_step = float(np.max(np.abs(np.diff(tone))))  # the sine's largest step
    hard_joins = biggest_jump(sr, 0)
    faded_joins = biggest_jump(sr, sr // 10)
    assert hard_joins > 5 * smooth_step  # a level step at a butt join is a click
    assert faded_joins < 1.3 * smooth_step  # the 100 ms cross-fade removes it


def test_changing_stems_between_chunks_is_an_error() -> None:
    calls = iter([{"a": 1}, {"b": 1}])

    def fickle(block: np.ndarray) -> Stems:
        return {name: block for name in next(calls)}

    with pytest.raises(RuntimeError, match="stems changed"):
        _run_in_memory(np.zeros((100, 2), np.float32), fickle, 60, 10)


def test_stream_writes_flac_stems_equal_to_the_input(tmp_path: Path) -> None:
    audio = 0.5 * np.random.default_rng(3).uniform(-1, 1, (3 * 44100 + 17, 2)).astype(np.float32)
    wav = synth.write(tmp_path / "decoded.wav", audio, subtype="FLOAT")
    progress: list[float] = []
    settings = SeparatorSettings(chunk_s=1.5, overlap_s=0.25)
    stems = separate_stream(
        wav, tmp_path / "out", _identity, settings, lambda f, m: progress.append(f)
    )

    assert set(stems) == {"vocals", "accompaniment"}
    vocals, rate = sf.read(str(stems["vocals"]), dtype="float32")
    info = sf.info(str(stems["vocals"]))
    assert (rate, info.channels, info.format, info.subtype) == (44100, 2, "FLAC", "PCM_24")
    assert vocals.shape == audio.shape
    assert np.max(np.abs(vocals - audio)) < 2**-22  # 24-bit quantisation only
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) == 3
    assert not list((tmp_path / "out").glob(".*.part"))


def test_failed_separation_leaves_no_stems(tmp_path: Path) -> None:
    wav = synth.write(tmp_path / "decoded.wav", np.ones((44100 * 2, 2), np.float32) * 0.1)
    calls = 0

    def breaks_on_second_chunk(block: np.ndarray) -> Stems:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("model crashed")
        return {"vocals": block}

    settings = SeparatorSettings(chunk_s=1.5, overlap_s=0.2)
    with pytest.raises(RuntimeError, match="model crashed"):
        separate_stream(wav, tmp_path / "out", breaks_on_second_chunk, settings)
    assert list((tmp_path / "out").iterdir()) == []


def test_reader_and_writer_round_trip_mono(tmp_path: Path) -> None:
    mono = synth.write(tmp_path / "mono.wav", np.linspace(-0.5, 0.5, 1000, dtype=np.float32))
    with WavReader(mono) as reader:
        block = reader.read(100, 200)
    assert block.shape == (100, 2)
    np.testing.assert_array_equal(block[:, 0], block[:, 1])
    writer = FlacStemWriter(tmp_path / "stems", 44100)
    writer.write("vocals", np.full((10, 2), 2.0, np.float32))  # overs are clipped, not wrapped
    paths = writer.commit()
    data, _ = sf.read(str(paths["vocals"]))
    assert np.all(data > 0.99)
