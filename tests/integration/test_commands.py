"""The README's commands, run as a person runs them: `singtome demo` and `singtome cover`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pyloudnorm
import pytest
import soundfile as sf

from frontends.demo import make_demo_inputs
from frontends.stack import StackConfig
from streams.client import job_state
from tests.modelserver import model_server
from tests.pipeline import SINGTOME
from tests.unit.test_trainer_agent import tiny_hubert  # noqa: F401  (a fixture)

SR = 44100


def _track_ready(stdout: str) -> dict[str, object]:
    """The JSON object a command prints last."""
    return json.loads(stdout[stdout.index("{\n") :])  # type: ignore[no-any-return]


def test_demo_makes_a_cover_through_the_broker(stack: StackConfig, tmp_path: Path) -> None:
    env = {
        **os.environ,
        # The demo finds the tests' stack already up: it uses it and leaves it running.
        "SINGTOME_STACK_DIR": str(stack.root),
        "SINGTOME_KAFKA_PORT": str(stack.kafka_port),
        "SINGTOME_S3_PORT": str(stack.s3_port),
        "SINGTOME_S3_BUCKET": stack.bucket,
        "SINGTOME_TOPIC_PREFIX": "demo.",
    }
    env.pop("SINGTOME_HUBERT_PATH", None)
    result = subprocess.run(
        [SINGTOME, "demo", "--out", str(tmp_path), "--timeout", "600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ready = _track_ready(result.stdout)
    assert ready["format"] == "mp3" and ready["track_key"]
    covers = list(tmp_path.glob("cover-*.mp3"))
    assert len(covers) == 1 and covers[0].stat().st_size > 10_000
    assert "WORLD fallback" in result.stderr
    # the model download was tried first (a closed loopback port here) and the reason said once
    assert "voice: the WORLD fallback, not RVC (could not fetch hubert_base.pt" in result.stderr
    assert "connection refused" in result.stderr
    assert "track: s3://" in result.stderr


@pytest.mark.slow
def test_demo_pulls_the_encoder_and_makes_an_rvc_cover(
    stack: StackConfig,
    tmp_path: Path,
    tiny_hubert: Path,  # noqa: F811
) -> None:
    """Served from a loopback server through a private manifest (the real files cannot be
    downloaded here): the content encoder arrives, RMVPE and the pretrained pair do not."""
    from streams.settings import Settings
    from streams.store import S3Store

    with model_server() as server:
        body = tiny_hubert.read_bytes()
        server.add("/rvc/hubert_base.pt", body)
        rows = [
            {
                "name": "hubert_base.pt",
                "kind": "content-encoder",
                "url": f"{server.url}/rvc/hubert_base.pt",
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "licence": "test",
                "path": "rvc/hubert_base.pt",
                "setting": "hubert_path",
            }
        ] + [
            {"name": name, "kind": "other", "url": f"{server.url}/rvc/{name}", "licence": "test"}
            for name in ("rmvpe.pt", "f0G40k.pth", "f0D40k.pth")
        ]
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps(rows))
        env = {
            **os.environ,
            "SINGTOME_STACK_DIR": str(stack.root),
            "SINGTOME_KAFKA_PORT": str(stack.kafka_port),
            "SINGTOME_S3_PORT": str(stack.s3_port),
            "SINGTOME_S3_BUCKET": stack.bucket,
            "SINGTOME_TOPIC_PREFIX": "demo-rvc.",
            "SINGTOME_MODEL_DIR": str(tmp_path / "models"),
            "SINGTOME_MODEL_MANIFEST": str(manifest),
            "SINGTOME_TRAIN_MODEL_SIZE": "tiny",
            "SINGTOME_DEVICE": "cpu",
        }
        env.pop("SINGTOME_MODEL_MIRROR", None)
        env.pop("SINGTOME_HUBERT_PATH", None)
        result = subprocess.run(
            [SINGTOME, "demo", "--out", str(tmp_path), "--timeout", "900", "--epochs", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    encoder = tmp_path / "models" / "rvc" / "hubert_base.pt"
    assert encoder.read_bytes() == body
    assert f"voice: RVC (content encoder {encoder}); not fetched: rmvpe.pt" in result.stderr
    ready = _track_ready(result.stdout)
    os.environ.update({k: v for k, v in stack.env().items() if k.startswith("AWS_")})
    store = S3Store(Settings(storage={"bucket": stack.bucket}))
    state = job_state(store, str(ready["job_id"]))
    assert state["voice.trained"]["voice_kind"] == "rvc"
    assert state["vocals.converted"]["backend"] == "rvc"
    assert list(tmp_path.glob("cover-*.mp3"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_demo_inputs(
        tmp_path_factory.mktemp("cover-inputs"),
        4.0,
        voice="en+f3",
        takes=2,
        take_s=5.0,
        seed=11,
        song_name="song.flac",
    )


def test_cover_in_one_process_then_reuses_the_voice(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    song, voice = inputs
    store = tmp_path / "store"

    def cover(out: Path, *extra: str) -> dict[str, object]:
        result = subprocess.run(
            [SINGTOME, "cover", str(song), "--voice", str(voice), "--store", str(store),
             "--out", str(out), "--format", "wav", *extra],
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return _track_ready(result.stdout)

    first = cover(tmp_path / "one.wav", "--report", str(tmp_path / "one.png"))
    audio, rate = sf.read(tmp_path / "one.wav")
    assert len(audio) / rate == pytest.approx(4.0, abs=0.05)
    assert pyloudnorm.Meter(rate).integrated_loudness(audio) == pytest.approx(-14.0, abs=1.0)
    assert (tmp_path / "one.png").stat().st_size > 50_000
    second = cover(tmp_path / "two.wav", "--f0-up-key", "2")
    hits = {r["stage"]: r["cache_hit"] for r in second["history"]}  # type: ignore[index, union-attr]
    assert hits["separator"] and hits["trainer"], "same song, same voice: reused"
    assert not hits["converter"], "a new key shift converts again"
    assert first["history"][1]["cache_hit"] is False  # type: ignore[index]


def test_cover_with_a_bad_song_says_why(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    bad = tmp_path / "song.mp3"
    bad.write_text("this is not a song")
    result = subprocess.run(
        [SINGTOME, "cover", str(bad), "--voice", str(inputs[1]), "--store", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "not_audio" in result.stderr and "Traceback" not in result.stderr
