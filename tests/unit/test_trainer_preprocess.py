"""RVC dataset preparation on generated recordings: slicing, segmenting, levels, bad input, then
pitch and content features of the segments (files, lengths, frame rates)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agents.trainer.features import (
    SegmentFiles,
    extract_features,
    list_training_segments,
    segment_names,
)
from agents.trainer.preprocess import (
    GT_WAVS_DIR,
    WAVS_16K_DIR,
    SilenceSlicer,
    normalise_peak,
    preprocess_dataset,
    split_segments,
)
from agents.voice.content import load_content_encoder
from foundation.errors import StageError
from tests.unit.test_voice_content import DIM, FINAL, fairseq_state, write_fairseq


def voiced(seconds: float, sr: int, f0: float = 180.0, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (amp * tone / 2.3).astype(np.float32)


def pause(seconds: float, sr: int) -> np.ndarray:
    rng = np.random.default_rng(int(seconds * 1000))
    return (1e-4 * rng.standard_normal(int(seconds * sr))).astype(np.float32)


def test_split_segments_follows_the_3_7_s_and_0_3_s_overlap_recipe():
    sr = 1000
    lengths = lambda s: [len(x) for x in split_segments(np.zeros(int(s * sr)), sr)]  # noqa: E731
    assert lengths(10.0) == [3700, 3700, 3200]  # starts at 0, 3.4, 6.8 s
    assert lengths(4.0) == [4000]  # up to 3.7 + 0.3 s stays whole
    assert lengths(4.1) == [3700, 700]
    assert lengths(1.0) == [1000]


def test_peak_normalisation():
    segment = np.array([0.1, -0.5, 0.25], dtype=np.float32)
    out = normalise_peak(segment)
    np.testing.assert_allclose(out, segment / 0.5 * 0.9 * 0.75 + 0.25 * segment, rtol=1e-6)
    assert normalise_peak(np.zeros(10, np.float32)) is None
    assert normalise_peak(np.array([3.0, 0.0], np.float32)) is None


def test_slicer_cuts_at_silences_and_keeps_at_most_half_a_second():
    sr = 16_000
    audio = np.concatenate([voiced(2.0, sr), pause(2.0, sr), voiced(2.5, sr), pause(0.2, sr)])
    clips = SilenceSlicer(sr).slice(audio)
    assert len(clips) == 2
    first, second = (len(c) / sr for c in clips)
    assert 2.0 <= first <= 2.0 + 0.5 + 0.02
    assert 2.5 <= second <= 2.5 + 0.5 + 0.2 + 0.02
    # A short breath (< 0.4 s) does not cut.
    assert (
        len(SilenceSlicer(sr).slice(np.concatenate([voiced(2, sr), pause(0.2, sr), voiced(2, sr)])))
        == 1
    )


def write(path: Path, audio: np.ndarray, sr: int) -> Path:
    sf.write(path, audio, sr)
    return path


@pytest.fixture
def dataset(tmp_path) -> list[Path]:
    sr_in = 44_100
    take1 = np.concatenate([voiced(5.5, sr_in), pause(1.0, sr_in), voiced(2.0, sr_in, 220.0)])
    take1 += 0.1  # a DC offset the 48 Hz high-pass must remove
    stereo = np.stack([take1, 0.5 * take1], axis=1)
    files = [write(tmp_path / "take1.wav", stereo, sr_in)]
    take2 = tmp_path / "take2.flac"
    write(take2, voiced(3.0, 22_050, 150.0), 22_050)
    files.append(take2)
    return files


def test_dataset_is_segmented_into_both_rates(tmp_path, dataset):
    exp = tmp_path / "exp"
    seen: list[float] = []
    report = preprocess_dataset(dataset, exp, 40_000, progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0
    gt = sorted((exp / GT_WAVS_DIR).glob("*.wav"))
    k16 = sorted((exp / WAVS_16K_DIR).glob("*.wav"))
    # take1: a 5.5 s clip (3.7 s + its rest) and a 2 s clip; take2: one 3 s clip.
    assert [p.stem for p in gt] == ["0_0", "0_1", "0_2", "1_0"] == [p.stem for p in k16]
    assert report.segments == 4 and report.files_used == 2 and not report.skipped
    total = 0.0
    for gt_path, k16_path in zip(gt, k16, strict=True):
        audio, sr = sf.read(gt_path, dtype="float32")
        low, sr16 = sf.read(k16_path, dtype="float32")
        assert sr == 40_000 and sr16 == 16_000 and audio.ndim == 1
        assert len(audio) <= 4.0 * sr
        assert abs(len(low) - len(audio) * 16_000 / 40_000) <= 1
        assert 0.675 <= np.max(np.abs(audio)) <= 0.9 + 1e-3  # 0.9 * 0.75 + 0.25 * peak
        assert abs(float(np.mean(audio[sr // 2 :]))) < 0.01  # DC removed by the high-pass
        total += len(audio) / sr
    assert len(sf.read(gt[0])[0]) == int(3.7 * 40_000)
    assert report.seconds == pytest.approx(total)


def test_compressed_formats_decode_through_ffmpeg(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    source = write(tmp_path / "src.wav", voiced(6.0, 44_100), 44_100)
    m4a = tmp_path / "take.m4a"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-c:a", "aac", str(m4a)],
        check=True,
    )
    report = preprocess_dataset([m4a], tmp_path / "exp", 32_000)
    # 3.7 s + the rest from 3.4 s (segments overlap by 0.3 s); AAC adds a few ms of padding.
    assert report.segments == 2 and report.seconds == pytest.approx(6.3, abs=0.1)


def test_one_corrupt_file_is_skipped_and_reported(tmp_path, dataset):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    report = preprocess_dataset([*dataset, broken], tmp_path / "exp", 40_000)
    assert report.files_used == 2
    assert [s.name for s in report.skipped] == ["broken.wav"]
    assert report.skipped[0].reason.startswith("not_audio")


def test_no_audio_at_all_is_dataset_empty(tmp_path):
    with pytest.raises(StageError) as err:
        preprocess_dataset([], tmp_path / "exp", 40_000)
    assert err.value.code == "dataset_empty"
    text = tmp_path / "notes.txt"
    text.write_text("these are not recordings")
    with pytest.raises(StageError) as err:
        preprocess_dataset([text], tmp_path / "exp", 40_000)
    assert err.value.code == "dataset_empty"


def test_silent_or_too_short_dataset(tmp_path):
    silent = write(tmp_path / "silent.wav", np.zeros(5 * 16_000, np.float32), 16_000)
    with pytest.raises(StageError) as err:
        preprocess_dataset([silent], tmp_path / "exp", 40_000)
    assert err.value.code == "dataset_too_short"
    short = write(tmp_path / "short.wav", voiced(1.5, 16_000), 16_000)
    with pytest.raises(StageError) as err:
        preprocess_dataset([short], tmp_path / "exp", 40_000)
    assert err.value.code == "dataset_too_short"
    assert preprocess_dataset([short], tmp_path / "exp", 40_000, min_total_s=1.0).segments == 1


def test_rerun_replaces_earlier_segments(tmp_path, dataset):
    exp = tmp_path / "exp"
    preprocess_dataset(dataset, exp, 40_000)
    preprocess_dataset(dataset[1:], exp, 40_000, min_total_s=1.0)
    assert sorted(p.stem for p in (exp / GT_WAVS_DIR).glob("*.wav")) == ["0_0"]


# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------

MODEL_SR = 40_000
PITCH = 200.0


def sung(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * PITCH * k * t) / k for k in range(1, 6))
    return (0.2 * tone).astype(np.float32)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = write_fairseq(tmp_path_factory.mktemp("hubert") / "hubert_base.pt", fairseq_state())
    return load_content_encoder(path)


@pytest.fixture
def exp_dir(tmp_path):
    source = tmp_path / "voice.wav"
    sf.write(source, sung(8.0, 48_000), 48_000)
    exp = tmp_path / "exp"
    report = preprocess_dataset([source], exp, MODEL_SR)
    assert report.segments == 3  # 0-3.7 s, 3.4-7.1 s, 6.8-8 s
    return exp


def test_f0_and_features_follow_the_recipe(exp_dir, encoder):
    report = extract_features(exp_dir, "harvest", encoder, "v2")
    assert report.segments == report.f0_written == report.features_written == 3
    ready = list_training_segments(exp_dir, "v2")
    assert [s.name for s in ready] == ["0_0", "0_1", "0_2"]
    for files in ready:
        n16 = sf.info(files.wav16k).frames
        f0 = np.load(files.f0_hz)
        coarse = np.load(files.f0_coarse)
        feats = np.load(files.features)
        assert f0.shape == coarse.shape == (n16 // 160 + 1,)  # 100 pitch frames per second
        assert f0.dtype == np.float32 and np.issubdtype(coarse.dtype, np.integer)
        assert coarse.min() >= 1 and coarse.max() <= 255
        assert feats.shape == ((n16 - 400) // 320 + 1, DIM) and feats.dtype == np.float32
        # Training pairs feature frame i with pitch frames 2i, 2i+1: the lengths must agree.
        assert 0 <= f0.shape[0] - 2 * feats.shape[0] <= 3
        voiced = f0[f0 > 0]
        assert len(voiced) > 0.8 * len(f0)
        assert abs(np.median(voiced) / PITCH - 1) < 0.01
    full = SegmentFiles.of(exp_dir, "0_0", "v2")
    assert np.load(full.f0_hz).shape == (int(3.7 * 16_000) // 160 + 1,)  # 371
    assert np.load(full.features).shape[0] == (int(3.7 * 16_000) - 400) // 320 + 1  # 184
    assert full.f0_hz.name == "0_0.wav.npy" and full.features.parent.name == "3_feature768"


def test_v1_features_and_resuming(exp_dir, encoder):
    first = extract_features(exp_dir, "pm", encoder, "v1")
    assert first.features_written == 3
    feats = np.load(SegmentFiles.of(exp_dir, "0_1", "v1").features)
    assert (
        feats.shape[1] == FINAL
        and SegmentFiles.of(exp_dir, "0_1", "v1").features.parent.name == "3_feature256"
    )
    again = extract_features(exp_dir, "pm", encoder, "v1")
    assert again.reused == 3 and again.f0_written == again.features_written == 0


def test_without_encoder_only_pitch_is_written(exp_dir):
    seen: list[float] = []
    report = extract_features(exp_dir, "pm", None, "v2", progress=lambda f, m: seen.append(f))
    assert report.f0_written == 3 and report.features_written == 0
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert list_training_segments(exp_dir, "v2") == []  # training needs the features too


def test_a_broken_segment_is_reported_and_left_out(exp_dir, encoder):
    sf.write(exp_dir / WAVS_16K_DIR / "9_0.wav", np.zeros(200, np.float32), 16_000, subtype="FLOAT")
    sf.write(
        exp_dir / "0_gt_wavs" / "9_0.wav", np.zeros(500, np.float32), MODEL_SR, subtype="FLOAT"
    )
    report = extract_features(exp_dir, "pm", encoder, "v2")
    assert [name for name, _ in report.failed] == ["9_0"]
    assert not SegmentFiles.of(exp_dir, "9_0", "v2").f0_hz.exists()  # no partial outputs
    assert "9_0" in segment_names(exp_dir)
    assert "9_0" not in [s.name for s in list_training_segments(exp_dir, "v2")]


def test_no_segments_is_dataset_too_short(tmp_path, encoder):
    with pytest.raises(StageError) as err:
        extract_features(tmp_path, "pm", encoder, "v2")
    assert err.value.code == "dataset_too_short"
