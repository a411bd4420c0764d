"""Decoding songs: each format and layout to 44.1 kHz float stereo; each bad input's own code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agents.separator import decode as decode_module
from agents.separator.decode import decode
from foundation.errors import StageError
from foundation.levels import loudest_window_dbfs
from frontends import demo_audio as synth
from streams.settings import AudioSettings

DURATION_S = 2.0


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s stereo song (sung vocal over a band) as float WAV at 44.1 kHz."""
    vocal, _ = synth.sung_vocal(DURATION_S, seed=11)
    band = synth.accompaniment(DURATION_S, seed=11)
    return synth.write(tmp_path_factory.mktemp("src") / "song.wav", synth.mix(vocal, band), 44100)


def _settings(**overrides: object) -> AudioSettings:
    return AudioSettings(**overrides)  # type: ignore[arg-type]


def _decode_error(path: Path, tmp_path: Path, settings: AudioSettings | None = None) -> StageError:
    with pytest.raises(StageError) as caught:
        decode(path, tmp_path / "decoded.wav", settings or _settings())
    return caught.value


FORMATS = [
    ("wav", ("-c:a", "pcm_s16le", "-ac", "1", "-ar", "22050")),
    ("wav", ("-c:a", "pcm_f32le", "-ar", "48000")),
    ("flac", ("-ar", "96000", "-sample_fmt", "s32")),
    ("mp3", ("-c:a", "libmp3lame", "-b:a", "192k")),
    ("ogg", ("-c:a", "libvorbis", "-ac", "1")),
    ("m4a", ("-c:a", "aac", "-b:a", "160k")),
    ("opus", ("-c:a", "libopus", "-ar", "48000")),
    # 5.1 surround: must come down to stereo, not keep or drop channels.
    ("flac", ("-af", "pan=5.1|FL=c0|FR=c1|FC=0.5*c0+0.5*c1|LFE=0*c0|BL=c0|BR=c1")),
]


@pytest.mark.parametrize(
    ("suffix", "args"), FORMATS, ids=lambda v: v if isinstance(v, str) else None
)
def test_decodes_each_format_to_float_stereo_44k(
    source_wav: Path, tmp_path: Path, suffix: str, args: tuple[str, ...]
) -> None:
    encoded = synth.encode_with_ffmpeg(source_wav, tmp_path / f"song.{suffix}", *args)
    decoded = decode(encoded, tmp_path / "decoded.wav", _settings())

    info = sf.info(str(decoded.path))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "FLOAT")
    assert decoded.sample_rate == 44100
    assert decoded.frames == info.frames
    # Codecs add or trim a few ms of padding, never more.
    assert decoded.duration_s == pytest.approx(DURATION_S, abs=0.03)
    audio, _ = sf.read(str(decoded.path), dtype="float32")
    try:  # what was encoded (mono and 16-bit variants change the level themselves)
        reference, _ = sf.read(str(encoded), dtype="float32")
    except sf.LibsndfileError:  # formats libsndfile cannot read: compare with the source
        reference, _ = sf.read(str(source_wav), dtype="float32")
    # The same music at about the same level, whatever the codec, layout or rate did to it.
    assert synth.rms_dbfs(audio) == pytest.approx(synth.rms_dbfs(reference), abs=1.5)


def test_lossless_decode_keeps_the_samples(source_wav: Path, tmp_path: Path) -> None:
    flac = synth.encode_with_ffmpeg(source_wav, tmp_path / "song.flac", "-sample_fmt", "s32")
    decoded = decode(flac, tmp_path / "decoded.wav", _settings())
    audio, _ = sf.read(str(decoded.path), dtype="float32")
    original, _ = sf.read(str(source_wav), dtype="float32")
    assert audio.shape == original.shape
    assert np.max(np.abs(audio - original)) < 1e-6


def test_not_audio(tmp_path: Path) -> None:
    text = tmp_path / "lyrics.mp3"
    text.write_text("these are the lyrics, not the song\n" * 200)
    assert _decode_error(text, tmp_path).code == "not_audio"
    noise = tmp_path / "blob.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert _decode_error(noise, tmp_path).code == "not_audio"


def test_video_without_audio_is_not_audio(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=1",
            "-c:v", "mpeg4", str(video),
        ],
        check=True,
    )  # fmt: skip
    error = _decode_error(video, tmp_path)
    assert error.code == "not_audio"
    assert "no audio stream" in error.message


def test_empty_audio(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert _decode_error(empty, tmp_path).code == "empty_audio"
    header_only = synth.write(tmp_path / "header_only.wav", np.zeros((0, 2), np.float32))
    assert _decode_error(header_only, tmp_path).code == "empty_audio"


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3", "m4a"])
def test_truncated_file_is_corrupt(source_wav: Path, tmp_path: Path, suffix: str) -> None:
    encoded = synth.encode_with_ffmpeg(source_wav, tmp_path / f"full.{suffix}")
    data = encoded.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    error = _decode_error(cut, tmp_path)
    assert error.code == "corrupt_audio"
    assert "cut." in error.message


def test_audio_header_with_garbage_is_corrupt(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.flac"
    damaged.write_bytes(b"fLaC" + bytes(range(256)) * 40)
    assert _decode_error(damaged, tmp_path).code == "corrupt_audio"


def test_silent_audio(tmp_path: Path) -> None:
    zeros = synth.write(tmp_path / "zeros.wav", np.zeros((44100, 2), np.float32))
    assert _decode_error(zeros, tmp_path).code == "silent_audio"
    hiss = 1e-4 * np.random.default_rng(1).standard_normal(88200).astype(np.float32)  # ~-80 dBFS
    quiet = synth.write(tmp_path / "hiss.flac", hiss)
    error = _decode_error(quiet, tmp_path)
    assert error.code == "silent_audio"
    assert "-60" in error.message


def test_one_loud_second_is_not_silent(tmp_path: Path) -> None:
    audio = np.zeros((5 * 44100, 2), np.float32)
    audio[3 * 44100 : 4 * 44100] = 0.05 * np.sin(np.linspace(0, 2000, 44100))[:, None]
    path = synth.write(tmp_path / "late_entry.wav", audio)
    decoded = decode(path, tmp_path / "decoded.wav", _settings())
    assert decoded.duration_s == pytest.approx(5.0)
    assert loudest_window_dbfs(decoded.path, 44100) > -40


def test_too_long_is_refused_before_decoding(
    source_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp3 = synth.encode_with_ffmpeg(source_wav, tmp_path / "song.mp3")
    commands: list[str] = []
    real_run = subprocess.run

    def recording_run(command: list[str], *args: object, **kwargs: object) -> object:
        commands.append(command[0])
        return real_run(command, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(decode_module.subprocess, "run", recording_run)
    error = _decode_error(mp3, tmp_path, _settings(max_audio_duration_s=1.5))
    assert error.code == "audio_too_long"
    assert "limit of 1.5 s" in error.message
    assert commands == ["ffprobe"]  # known from the header: nothing was decoded
    assert not (tmp_path / "decoded.wav").exists()


def test_too_large_is_refused_before_probing(
    source_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("size must be checked before running ffprobe/ffmpeg")

    monkeypatch.setattr(decode_module.subprocess, "run", no_subprocess)
    error = _decode_error(source_wav, tmp_path, _settings(max_audio_bytes=10_000))
    assert error.code == "audio_too_large"
    assert "SINGTOME_MAX_AUDIO_BYTES" in error.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rate", [44100, 48000])  # passed through as is, and resampled
def test_nan_or_inf_samples_are_invalid_audio(tmp_path: Path, bad: float, rate: int) -> None:
    audio = 0.3 * np.sin(np.linspace(0, 4000, 2 * rate, dtype=np.float32))
    audio[int(1.5 * rate) : int(1.5 * rate) + 4] = bad
    path = tmp_path / "song.wav"
    sf.write(str(path), audio, rate, subtype="FLOAT")
    error = _decode_error(path, tmp_path)
    assert error.code == "invalid_audio"
    assert error.message.startswith("song.wav:") and "at 1.5" in error.message
