"""The whole pipeline in one process on the RVC path: the trainer's model and index feed the
converter (tiny sizes, a tiny 768-d content encoder written by the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from foundation.errors import StageError
from frontends.demo import make_demo_inputs
from frontends.local import run_cover
from schemas.events import JobOptions
from streams.client import VoiceSource
from streams.keys import job_event_key
from streams.settings import Settings
from tests.unit.test_trainer_agent import tiny_hubert  # noqa: F401  (a fixture)

SR = 44100


def test_rvc_cover_end_to_end(tmp_path: Path, tiny_hubert: Path) -> None:  # noqa: F811
    song, voice = make_demo_inputs(tmp_path, 3.0, voice="en+f3", takes=2, take_s=6.0, seed=5)
    options = JobOptions()
    options.voice.epochs = 1
    options.voice.f0_method = "harvest"
    options.conversion.f0_method = "harvest"
    options.output.format = "flac"
    stages: list[str] = []
    ready, track = run_cover(
        song,
        settings=Settings(
            models={"hubert_path": tiny_hubert, "device": "cpu"}, trainer={"model_size": "tiny"}
        ),
        store_dir=tmp_path / "store",
        voice=VoiceSource(dataset=voice),
        options=options,
        progress=lambda stage, fraction, message: stages.append(stage),
    )
    assert ready.keys.voice_index and ready.keys.voice_model
    assert ready.keys.voice_model.endswith("model.pth")
    audio, rate = sf.read(track)
    assert rate == SR and len(audio) / rate == pytest.approx(3.0, abs=0.05)
    assert ready.loudness_lufs == pytest.approx(-14.0, abs=1.0)
    assert stages[0] == "separator" and stages[-1] == "mixer"
    state = json.loads(
        (tmp_path / "store" / job_event_key(ready.job_id, "vocals.converted")).read_text()
    )
    assert state["backend"] == "rvc"
    converted = Path(tmp_path / "store" / (ready.keys.converted_vocals or ""))
    assert sf.info(str(converted)).duration == pytest.approx(3.0, abs=0.05)


def _bad_inputs(tmp_path: Path) -> tuple[Path, Path]:
    song = tmp_path / "song.mp3"
    song.write_bytes(b"not a song at all" * 100)
    voice = tmp_path / "voice"
    voice.mkdir()
    (voice / "take.wav").write_bytes(b"RIFF....")
    return song, voice


def test_a_bad_song_is_answered_as_a_worker_answers_it(tmp_path: Path) -> None:
    """The cover runs the workers' runner: the stage's error is the worker's track.failed, kept
    as the job's state, with the original in the DLQ (here: the emitter)."""
    song, voice = _bad_inputs(tmp_path)
    heard: list[tuple[str, float]] = []
    with pytest.raises(StageError) as caught:
        run_cover(
            song,
            settings=Settings(models={"hubert_path": None}),
            store_dir=tmp_path / "store",
            voice=VoiceSource(dataset=voice),
            job_id="bad-song",
            progress=lambda stage, fraction, message: heard.append((stage, fraction)),
        )
    assert caught.value.code == "not_audio"
    failed = json.loads(
        (tmp_path / "store" / job_event_key("bad-song", "track.failed")).read_text()
    )
    assert (failed["stage"], failed["code"], failed["retriable"]) == (
        "separator",
        "not_audio",
        False,
    )
    assert (tmp_path / "store" / "jobs" / "bad-song" / "seen" / "separator").is_dir()
    assert heard == [("separator", 0.0)], "no stage after the failed one runs"


def test_a_stage_crash_is_an_internal_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agents.separator.agent

    def crashes(*args: object) -> None:
        raise RuntimeError("a bug in the stage")

    monkeypatch.setattr(agents.separator.agent, "handle", crashes)
    song, voice = _bad_inputs(tmp_path)
    with pytest.raises(StageError) as caught:
        run_cover(
            song,
            settings=Settings(),
            store_dir=tmp_path / "store",
            voice=VoiceSource(dataset=voice),
        )
    assert caught.value.code == "internal_error" and "a bug in the stage" in caught.value.message


def test_the_one_process_cover_imports_no_faust() -> None:
    """`singtome cover` runs without a broker: neither it nor any stage it calls imports Faust or
    the Kafka worker (checked in a fresh interpreter: this one has them loaded by other tests)."""
    code = "\n".join(
        [
            "import sys",
            "import frontends.batch, frontends.cli, frontends.local",
            "import agents.mixer.report",
            "from agents.registry import STAGES",
            "handlers = [stage.load() for stage in STAGES]",
            "leaked = sorted(m for m in sys.modules",
            "                if m.split('.')[0] == 'faust' or m == 'streams.worker')",
            "print(len(handlers), leaked)",
            "sys.exit(1 if leaked else 0)",
        ]
    )
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[0] == "4"


def test_a_voice_path_is_a_dataset_folder_or_a_model_file(tmp_path: Path) -> None:
    from pydantic import ValidationError

    folder, model, index = tmp_path / "voice", tmp_path / "alice.pth", tmp_path / "alice.index"
    folder.mkdir()
    model.write_bytes(b"x")
    assert VoiceSource.from_path(folder) == VoiceSource(dataset=folder)
    assert VoiceSource.from_path(model, index) == VoiceSource(model=model, index=index)
    with pytest.raises(ValidationError, match="not both"):
        VoiceSource(dataset=folder, model=model)
