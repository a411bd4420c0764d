"""The README's commands, run as a person runs them: `singtome demo` and `singtome cover`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyloudnorm
import pytest
import soundfile as sf

from streams.demo import make_demo_inputs
from streams.stack import StackConfig
from tests.pipeline import SINGTOME

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
    assert "track: s3://" in result.stderr


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
