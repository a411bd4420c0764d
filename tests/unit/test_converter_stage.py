"""The converter stage, its event handler and the ``convert`` command, without Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from agents.converter.agent import handle
from agents.converter.cli import convert_command
from agents.converter.models import ModelCache
from agents.converter.stage import (
    ConversionResult,
    convert_vocals,
    find_voice_files,
    pitch_method,
)
from agents.trainer.profile import learn_profile
from foundation.errors import StageError
from frontends.demo_audio import speech_voice, sung_vocal, write
from schemas.events import ConversionOptions, JobOptions, ObjectKeys, VocalsConverted, VoiceTrained
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore
from tests.unit.test_converter import write_tiny_hubert, write_tiny_voice_model

SR = 44100


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A WORLD profile, tiny RVC models (v2 and v1) with a v1 (256-d) index, a tiny HuBERT."""
    from agents.voice.index import build_index, save_index

    root = tmp_path_factory.mktemp("voices")
    speech = write(root / "dataset" / "me.wav", speech_voice(6.0, SR, voice="en+f2", seed=1), SR)
    profile = learn_profile([speech]).save(root / "world" / "profile.npz")
    rng = np.random.default_rng(0)
    return {
        "profile": profile,
        "v2": write_tiny_voice_model(root / "rvc" / "v2.pth", "v2", "40k", True),
        "v1_index": save_index(
            build_index(rng.standard_normal((100, 256)).astype(np.float32)), root / "v1.index"
        ),
        "hubert": write_tiny_hubert(root / "hubert_tiny.pt"),
    }


@pytest.fixture(scope="module")
def vocals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio, _ = sung_vocal(1.5, SR, voice="en+m3", seed=2)
    return write(tmp_path_factory.mktemp("song") / "vocals.flac", audio, SR)


def settings_for(tmp_path: Path, **models: object) -> Settings:
    """Settings with the model dir in ``tmp_path`` and ``models`` (``hubert_path=...``) set."""
    return Settings(models={"dir": tmp_path / "models", **models}, converter={"model_cache_mb": 64})


def groups(settings: Settings) -> dict[str, Any]:
    """The groups convert_vocals takes besides the converter's own."""
    return {"models": settings.models, "audio": settings.audio}


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


def test_world_profile_converts_to_a_stem_rate_flac(
    voices: dict[str, Path], vocals: Path, tmp_path: Path
) -> None:
    seen: list[float] = []
    settings = settings_for(tmp_path)
    result = convert_vocals(
        vocals,
        voices["profile"].parent,
        ConversionOptions(),
        settings.converter,
        lambda fraction, _: seen.append(fraction),
        out_path=tmp_path / "out.flac",
        **groups(settings),
    )
    assert result.backend == "world"
    info = sf.info(str(result.path))
    assert info.format == "FLAC" and info.samplerate == SR == result.sample_rate
    assert info.frames == sf.info(str(vocals)).frames
    assert result.duration_s == pytest.approx(1.5, abs=1e-3)
    assert seen and seen[-1] == 1.0


def test_rvc_model_converts_through_the_stage(
    voices: dict[str, Path], vocals: Path, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, hubert_path=voices["hubert"])
    cache = ModelCache(64 * 2**20)
    params = ConversionOptions(f0_method="pm", f0_up_key=2)

    def convert(name: str) -> ConversionResult:
        return convert_vocals(
            vocals,
            [voices["v2"]],
            params,
            settings.converter,
            out_path=tmp_path / name,
            cache=cache,
            **groups(settings),
        )

    result = convert("rvc.flac")
    assert result.backend == "rvc"
    audio, sr = sf.read(str(result.path))
    assert sr == SR and len(audio) == sf.info(str(vocals)).frames
    assert np.std(audio) > 0
    # Models stay loaded: a second conversion loads nothing.
    loaded = cache.misses
    convert("again.flac")
    assert cache.misses == loaded and cache.hits >= 2


def test_silent_vocals_are_refused(voices: dict[str, Path], tmp_path: Path) -> None:
    quiet = write(tmp_path / "quiet.wav", np.full(SR, 1e-5, dtype=np.float32), SR)
    settings = settings_for(tmp_path)
    with pytest.raises(StageError) as caught:
        convert_vocals(
            quiet, [voices["profile"]], ConversionOptions(), settings.converter, **groups(settings)
        )
    assert caught.value.code == "silent_audio"


def test_missing_or_unusable_models(voices: dict[str, Path], vocals: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    cases = [
        (empty, settings_for(tmp_path), "model_not_found"),
        ([tmp_path / "gone.pth"], settings_for(tmp_path), "model_not_found"),
        # An RVC model without a content encoder configured.
        ([voices["v2"]], settings_for(tmp_path), "model_not_found"),
        # A v2 (768-d) model with a v1 (256-d) index.
        (
            [voices["v2"], voices["v1_index"]],
            settings_for(tmp_path, hubert_path=voices["hubert"]),
            "model_mismatch",
        ),
    ]
    for voice, settings, code in cases:
        with pytest.raises(StageError) as caught:
            convert_vocals(
                vocals,
                voice,
                ConversionOptions(f0_method="pm"),
                settings.converter,
                cache=ModelCache(64 * 2**20),
                **groups(settings),
            )
        assert caught.value.code == code, (voice, caught.value.message)


def test_voice_files_are_found_by_kind(voices: dict[str, Path], tmp_path: Path) -> None:
    found = find_voice_files([voices["v2"], voices["v1_index"]])
    assert (found.backend, found.model, found.index) == ("rvc", voices["v2"], voices["v1_index"])
    assert find_voice_files(voices["profile"].parent).backend == "world"
    # A random .npz is not a voice.
    np.savez(tmp_path / "profile.npz", x=np.zeros(2))
    with pytest.raises(StageError):
        find_voice_files(tmp_path)


def test_rmvpe_without_weights_falls_back_to_fcpe(tmp_path: Path) -> None:
    rmvpe = ConversionOptions(f0_method="rmvpe")
    assert pitch_method(rmvpe, settings_for(tmp_path).models) == "fcpe"
    weights = tmp_path / "rmvpe.pt"
    assert pitch_method(rmvpe, settings_for(tmp_path, rmvpe_path=weights).models) == "rmvpe"
    harvest = ConversionOptions(f0_method="harvest")
    assert pitch_method(harvest, settings_for(tmp_path).models) == "harvest"


# --------------------------------------------------------------------------------------------------
# Handler
# --------------------------------------------------------------------------------------------------


def _voice_trained(store: LocalStore, voices: dict[str, Path], vocals: Path) -> VoiceTrained:
    store.put_file("stems/abc/vocals.flac", vocals)
    store.put_file("voices/def/profile.npz", voices["profile"])
    return VoiceTrained(
        job_id="job-1",
        voice_kind="world",
        keys=ObjectKeys(
            vocals="stems/abc/vocals.flac",
            accompaniment="stems/abc/accompaniment.flac",
            voice_model="voices/def/profile.npz",
        ),
    )


def test_handler_stores_converted_vocals_and_reuses_them(
    voices: dict[str, Path], vocals: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    event = _voice_trained(store, voices, vocals)
    progress: list[float] = []

    def context(name: str) -> StageContext:
        return StageContext(
            stage="converter",
            settings=settings_for(tmp_path),
            store=store,
            workdir=tmp_path / name,
            progress=lambda fraction, _: progress.append(fraction),
        )

    first = handle(event, context("run1"))
    assert isinstance(first, VocalsConverted)
    assert (first.backend, first.sample_rate, first.cache_hit) == ("world", SR, False)
    key = first.keys.converted_vocals
    assert key and key.startswith("converted/") and store.exists(key)
    assert first.keys.vocals == event.keys.vocals and first.job_id == "job-1"
    assert first.duration_s == pytest.approx(1.5, abs=1e-3)
    assert progress

    second = handle(event, context("run2"))
    assert second.cache_hit and second.keys.converted_vocals == key
    assert second.duration_s == pytest.approx(first.duration_s)
    assert len([k for k in store.list("converted/") if k.endswith("vocals.flac")]) == 1

    transposed = event.model_copy(
        update={"options": JobOptions(conversion=ConversionOptions(f0_up_key=12))}
    )
    third = handle(transposed, context("run3"))
    assert not third.cache_hit and third.keys.converted_vocals != key


def test_the_handler_takes_the_voice_kind_from_the_event(
    voices: dict[str, Path], vocals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kind is decided once (voice.trained's voice_kind): the stage does not look the voice
    files over again to decide it."""
    import agents.converter.stage as converter_stage

    def no_second_decision(*args: object) -> None:
        raise AssertionError("the voice kind was decided again from the files")

    monkeypatch.setattr(converter_stage, "find_voice_files", no_second_decision)
    store = LocalStore(tmp_path / "store")
    event = _voice_trained(store, voices, vocals)
    ctx = StageContext("converter", settings_for(tmp_path), store, tmp_path / "work")
    out = handle(event, ctx)
    assert out.backend == event.voice_kind == "world"


def test_handler_reports_a_missing_model_object(
    voices: dict[str, Path], vocals: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    event = _voice_trained(store, voices, vocals)
    event.keys.voice_model = "voices/none/profile.npz"
    ctx = StageContext("converter", settings_for(tmp_path), store, tmp_path / "work")
    with pytest.raises(StageError) as caught:
        handle(event, ctx)
    assert caught.value.code == "missing_object"


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def test_convert_command_finds_the_model_by_name(
    voices: dict[str, Path], vocals: Path, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    settings.models.dir.mkdir(parents=True)
    (settings.models.dir / "alice.npz").write_bytes(voices["profile"].read_bytes())
    result = convert_command("alice", str(vocals), None, f0_up_key=-12, settings=settings)
    assert result.backend == "world"
    assert result.path == vocals.with_name("vocals_converted.flac")
    assert sf.info(str(result.path)).samplerate == SR
    with pytest.raises(StageError) as caught:
        convert_command("bob", str(vocals), settings=settings)
    assert caught.value.code == "model_not_found"
