"""Disk-backed signals: they read and write like arrays, and what is built on them (resampling,
decoding, encoding, the converter's padded pieces) gives exactly what the in-memory path gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

import foundation.audio as audio_module
import foundation.resample as resample_module
from agents.converter.pipeline import padded_span
from foundation.audio import load_audio
from foundation.errors import StageError
from foundation.resample import resample, resample_signal
from foundation.signal import DiskSignal, fit, in_memory, peak, scale, write_sound_file

operation = st.one_of(
    st.tuples(st.just("write"), st.integers(-80, 80), st.integers(-80, 80), st.floats(-2, 2)),
    st.tuples(st.just("read"), st.integers(-80, 80), st.integers(-80, 80), st.just(0.0)),
    st.tuples(st.just("resize"), st.integers(0, 70), st.just(0), st.just(0.0)),
)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 64), operations=st.lists(operation, max_size=12))
def test_a_disk_signal_reads_and_writes_like_an_array(
    length: int, operations: list[tuple[str, int, int, float]]
) -> None:
    model = np.zeros(length, dtype=np.float32)
    with DiskSignal(length) as signal:
        for kind, a, b, value in operations:
            if kind == "write":
                ramp = np.float32(value) * np.arange(len(model[a:b]), dtype=np.float32)
                model[a:b] = ramp
                signal[a:b] = ramp
            elif kind == "read":
                np.testing.assert_array_equal(signal[a:b], model[a:b])
            else:
                kept = model[:a]
                model = np.concatenate([kept, np.zeros(a - len(kept), dtype=np.float32)])
                signal.resize(a)
            assert len(signal) == len(model)
        np.testing.assert_array_equal(signal.to_numpy(), model)
        assert peak(signal) == (float(np.max(np.abs(model))) if len(model) else 0.0)


def test_a_disk_signal_refuses_strides_and_indices() -> None:
    with DiskSignal(10) as signal:
        with pytest.raises(ValueError, match="step 1"):
            signal[::2]
        with pytest.raises(TypeError, match="slices"):
            signal[3]  # type: ignore[index]
        with pytest.raises(ValueError, match="broadcast"):
            signal[0:4] = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError):
        DiskSignal(-1)


def test_block_helpers_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1.5, 1.5, 3_000_001).astype(np.float32)  # three 1 M-sample blocks + 1
    signal = DiskSignal(len(values), tmp_path)
    signal[:] = values
    assert peak(signal) == float(np.max(np.abs(values)))
    scale(signal, 0.5)
    np.testing.assert_array_equal(signal.to_numpy(), values * np.float32(0.5))
    trimmed = fit(signal, 1000)
    assert trimmed is signal and len(signal) == 1000
    assert len(fit(signal, 1500)) == 1500 and not np.any(signal[1000:])
    array = fit(values[:10], 12)
    assert isinstance(array, np.ndarray) and len(array) == 12 and array[-1] == 0
    assert list(tmp_path.iterdir()) == []  # the file is unlinked from the start
    signal.close()
    assert signal.closed


@pytest.mark.parametrize(("sr_in", "sr_out"), [(16000, 48000), (48000, 44100), (40000, 44100)])
def test_resampling_a_disk_signal_equals_resampling_the_array(
    monkeypatch: pytest.MonkeyPatch, sr_in: int, sr_out: int
) -> None:
    monkeypatch.setattr(resample_module, "RESAMPLE_CHUNK", 4096)  # many chunks, quickly
    rng = np.random.default_rng(1)
    values = rng.standard_normal(50_000).astype(np.float32)
    source = DiskSignal(len(values))
    source[:] = values
    out = resample_signal(source, sr_in, sr_out, DiskSignal.factory())
    assert isinstance(out, DiskSignal)
    np.testing.assert_array_equal(out.to_numpy(), resample(values, sr_in, sr_out))
    short = resample_signal(values[:300], sr_in, sr_out, in_memory)
    np.testing.assert_array_equal(np.asarray(short), resample(values[:300], sr_in, sr_out))


def test_long_files_decode_through_disk_to_the_same_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    stereo = (0.3 * rng.standard_normal((30_000, 2))).astype(np.float32)
    path = tmp_path / "song.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    in_ram = load_audio(path, 16000)
    monkeypatch.setattr(audio_module, "DISK_DECODE_FRAMES", 1000)
    monkeypatch.setattr(audio_module, "DECODE_BLOCK", 4096)
    made: list[DiskSignal] = []
    real_factory = DiskSignal.factory

    def recording_factory(directory: object = None) -> object:
        allocate = real_factory()

        def make(length: int) -> DiskSignal:
            made.append(allocate(length))  # type: ignore[arg-type]
            return made[-1]

        return make

    monkeypatch.setattr(DiskSignal, "factory", staticmethod(recording_factory))
    through_disk = load_audio(path, 16000)
    assert made and all(signal.closed for signal in made)
    np.testing.assert_array_equal(through_disk, in_ram)
    same_rate = load_audio(path, 44100)  # no resampling: nothing to gain from the disk
    assert len(made) == 1 and len(same_rate) == 30_000

    stereo[20_000, 1] = np.nan
    sf.write(path, stereo, 44100, subtype="FLOAT")
    with pytest.raises(StageError) as caught:
        load_audio(path, 16000)
    assert caught.value.code == "corrupt_audio"


def test_a_signal_encodes_block_by_block_as_soundfile_writes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = (0.5 * rng.standard_normal(2_500_000)).clip(-1, 1).astype(np.float32)
    signal = DiskSignal(len(values))
    signal[:] = values
    write_sound_file(tmp_path / "blocks.flac", signal, 44100)
    sf.write(tmp_path / "whole.flac", values, 44100, format="FLAC", subtype="PCM_24")
    blocks, sr = sf.read(tmp_path / "blocks.flac", dtype="float32")
    whole, _ = sf.read(tmp_path / "whole.flac", dtype="float32")
    assert sr == 44100
    np.testing.assert_array_equal(blocks, whole)


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 60),
    pad=st.integers(0, 70),
    bounds=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_padded_spans_are_slices_of_the_reflect_padded_whole(
    length: int, pad: int, bounds: tuple[float, float]
) -> None:
    audio = np.arange(1, length + 1, dtype=np.float32)
    if pad >= length and length == 1:
        pad = 0  # numpy cannot reflect a single sample
    padded = np.pad(audio, (pad, pad), mode="reflect")
    first, last = sorted(int(b * len(padded)) for b in bounds)
    np.testing.assert_array_equal(padded_span(audio, pad, first, last), padded[first:last])
