"""The trainer handler: voice resolution, the voice cache and its lock, both voice kinds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import agents.trainer.agent as trainer_agent
import agents.trainer.stage as trainer_stage
from agents.trainer.agent import handle, voice_keys
from foundation.errors import StageError
from frontends.demo_audio import speech_voice
from schemas.events import JobOptions, ObjectKeys, VocalsSeparated, VoiceOptions
from streams import outputs
from streams.outputs import write_manifest
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore
from tests.unit.test_voice_content import fairseq_state, write_fairseq

SR = 44100


def _wav(seconds: float, seed: int, voice: str = "en+m3") -> bytes:
    speech = speech_voice(seconds, SR, voice=voice, seed=seed)
    buffer = io.BytesIO()
    sf.write(buffer, speech, SR, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def takes() -> list[bytes]:
    return [_wav(6.0, seed) for seed in range(2)]


def _ctx(tmp_path: Path, settings: Settings, store: LocalStore) -> StageContext:
    workdir = tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"
    workdir.mkdir()
    return StageContext(stage="trainer", settings=settings, store=store, workdir=workdir)


def _event(store: LocalStore, job: str, files: dict[str, bytes]) -> VocalsSeparated:
    for name, data in files.items():
        store.put_bytes(f"uploads/{job}/voice/{name}", data)
    return VocalsSeparated(
        job_id=job,
        keys=ObjectKeys(song="s", vocals="v", accompaniment="a"),
        options=JobOptions(voice=VoiceOptions(dataset_key=f"uploads/{job}/voice/")),
        sample_rate=SR,
        duration_s=1.0,
        separator_model="spleeter",
    )


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = trainer_agent.train_voice

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_agent, "train_voice", counting)
    return calls


def test_world_voice_is_trained_once_then_reused(
    tmp_path: Path, takes: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    settings = Settings(models={"hubert_path": None})
    calls = _count_training(monkeypatch)
    files = {"a.wav": takes[0], "b.wav": takes[1]}
    first = handle(_event(store, "j1", files), _ctx(tmp_path, settings, store))
    assert first.voice_kind == "world" and not first.cache_hit
    assert first.keys.voice_model and first.keys.voice_model.endswith("profile.npz")
    assert store.exists(first.keys.voice_model) and first.keys.voice_index is None
    # Same recordings under other names, for another job: the same voice, nothing trained.
    again = handle(
        _event(store, "j2", {"x.wav": takes[1], "y.wav": takes[0]}),
        _ctx(tmp_path, settings, store),
    )
    assert again.cache_hit and again.keys.voice_model == first.keys.voice_model
    assert len(calls) == 1


def test_bad_datasets_are_named(tmp_path: Path, takes: list[bytes]) -> None:
    store = LocalStore(tmp_path / "store")
    settings = Settings(models={"hubert_path": None})
    with pytest.raises(StageError) as empty:
        handle(_event(store, "none", {"notes.txt": b"hello"}), _ctx(tmp_path, settings, store))
    assert empty.value.code == "dataset_empty"
    with pytest.raises(StageError) as corrupt:
        handle(_event(store, "bad", {"x.wav": b"RIFF...."}), _ctx(tmp_path, settings, store))
    assert corrupt.value.code == "dataset_empty" and "x.wav" in corrupt.value.message
    short = {"a.wav": _wav(0.6, 0)}
    with pytest.raises(StageError) as too_short:
        handle(_event(store, "short", short), _ctx(tmp_path, settings, store))
    assert too_short.value.code == "dataset_too_short"
    many = Settings(models={"hubert_path": None}, audio={"max_dataset_files": 1})
    with pytest.raises(StageError) as too_many:
        handle(
            _event(store, "many", {"a.wav": takes[0], "b.wav": takes[1]}),
            _ctx(tmp_path, many, store),
        )
    assert too_many.value.code == "dataset_too_large"
    event = _event(store, "nothing", {})
    event.options.voice.dataset_key = None
    with pytest.raises(StageError) as no_voice:
        handle(event, _ctx(tmp_path, settings, store))
    assert no_voice.value.code == "no_voice"


def test_one_corrupt_file_among_good_ones_is_skipped_and_reported(
    tmp_path: Path, takes: list[bytes]
) -> None:
    store = LocalStore(tmp_path / "store")
    files = {"a.wav": takes[0], "b.wav": takes[1], "broken.mp3": b"ID3 but nothing else"}
    out = handle(
        _event(store, "j", files), _ctx(tmp_path, Settings(models={"hubert_path": None}), store)
    )
    assert out.voice_kind == "world" and out.metrics["skipped_files"] == 1.0


def test_a_held_lock_waits_for_the_other_worker(
    tmp_path: Path, takes: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    settings = Settings(models={"hubert_path": None})
    event = _event(store, "j", {"a.wav": takes[0], "b.wav": takes[1]})
    ctx = _ctx(tmp_path, settings, store)
    files = trainer_agent._dataset_files(event, ctx)
    output = trainer_agent.voice_output(files, trainer_agent.training_config(event, ctx), ctx)
    model_key = voice_keys(output.digest, "world")["model"]
    store.put_bytes(output.lock, b"another worker")
    calls = _count_training(monkeypatch)
    sleeps: list[float] = []

    def other_worker_finishes(seconds: float) -> None:
        sleeps.append(seconds)
        store.put_bytes(model_key, b"trained elsewhere")
        write_manifest(store, output, {"metrics": {}})  # what a finishing worker writes last

    monkeypatch.setattr(outputs.time, "sleep", other_worker_finishes)
    out = handle(event, _ctx(tmp_path, settings, store))
    assert out.cache_hit and out.keys.voice_model == model_key
    assert sleeps and not calls


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 768-d, one-layer HuBERT in fairseq's layout: tiny, but with v2's feature width."""
    state = fairseq_state(dim=768, layers=1, ff=64, final=256, pos_kernel=16, pos_groups=16)
    return write_fairseq(tmp_path_factory.mktemp("hubert") / "hubert_base.pt", state)


def test_rvc_voice_model_and_index_with_a_content_encoder(
    tmp_path: Path, takes: list[bytes], tiny_hubert: Path
) -> None:
    from agents.voice.checkpoint import load_voice_model
    from agents.voice.index import load_index

    store = LocalStore(tmp_path / "store")
    settings = Settings(
        models={"hubert_path": tiny_hubert, "device": "cpu"}, trainer={"model_size": "tiny"}
    )
    event = _event(store, "rvc", {"a.wav": takes[0], "b.wav": takes[1]})
    event.options.voice.epochs = 1
    event.options.voice.f0_method = "harvest"
    out = handle(event, _ctx(tmp_path, settings, store))
    assert out.voice_kind == "rvc" and not out.cache_hit
    assert out.keys.voice_model and out.keys.voice_index
    assert np.isfinite(out.metrics["loss_mel"])
    local = tmp_path / "model.pth"
    local.write_bytes(store.get_bytes(out.keys.voice_model))
    model = load_voice_model(local)
    assert (model.version, model.f0, model.tgt_sr) == ("v2", True, 40000)
    index_path = tmp_path / "model.index"
    index_path.write_bytes(store.get_bytes(out.keys.voice_index))
    index, vectors = load_index(index_path)
    assert index.d == 768 and len(vectors) > 0

    # The same model named by a later job is checked and passed on; a bad one is refused.
    named = _event(store, "named", {})
    named.options.voice.dataset_key = None
    named.options.voice.model_key = out.keys.voice_model
    named.options.voice.index_key = out.keys.voice_index
    passed = handle(named, _ctx(tmp_path, settings, store))
    assert passed.voice_kind == "rvc" and passed.cache_hit
    assert passed.keys.voice_model == out.keys.voice_model

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    buffer = io.BytesIO()
    torch.save({"weight": {}, "config": [], "evil": Payload()}, buffer)
    store.put_bytes("uploads/evil/model.pth", buffer.getvalue())
    named.options.voice.model_key = "uploads/evil/model.pth"
    named.options.voice.index_key = None
    with pytest.raises(StageError) as unsafe:
        handle(named, _ctx(tmp_path, settings, store))
    assert unsafe.value.code == "unsafe_model"


def test_train_command_follows_sagemaker_conventions(tmp_path: Path, takes: list[bytes]) -> None:
    channel = tmp_path / "input" / "data" / "training"
    channel.mkdir(parents=True)
    for i, data in enumerate(takes):
        (channel / f"take{i}.wav").write_bytes(data)
    model_dir = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if k != "SINGTOME_HUBERT_PATH"}
    env.update(SM_CHANNEL_TRAINING=str(channel), SM_MODEL_DIR=str(model_dir))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("singtome")), "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (model_dir / trainer_stage.PROFILE_FILE).is_file()
    assert "WORLD fallback" in result.stderr
