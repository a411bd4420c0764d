"""Several songs, one voice: `singtome cover SONG... | DIR --out DIR/` trains the voice once;
`singtome submit SONG... --wait` follows every job."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from frontends.demo import make_demo_inputs
from tests.pipeline import SINGTOME, Pipeline

SECONDS = 3.0


@pytest.fixture(scope="module")
def songs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    folder = tmp_path_factory.mktemp("batch-inputs")
    made = [
        make_demo_inputs(
            folder, SECONDS, voice="en+f3", takes=2, take_s=5.0, seed=20 + i, song_name=f"s{i}.wav"
        )
        for i in range(3)
    ]
    return [song for song, _ in made], made[0][1]


def _voice_trained(store: Path) -> list[dict[str, object]]:
    """Every job's voice.trained event in the local store, in the order the jobs ran."""
    events = [json.loads(p.read_text()) for p in store.glob("jobs/*/voice.trained.json")]
    return sorted(events, key=lambda e: str(e["occurred_at"]))


def test_three_songs_one_voice_trained_once(songs: tuple[list[Path], Path], tmp_path: Path) -> None:
    tracks, voice = songs
    store, out = tmp_path / "store", tmp_path / "covers"
    result = subprocess.run(
        [SINGTOME, "cover", *map(str, tracks), "--voice", str(voice), "--store", str(store),
         "--out", f"{out}/", "--format", "wav"],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for song in tracks:
        audio, rate = sf.read(out / f"{song.stem}.wav")
        assert len(audio) / rate == pytest.approx(SECONDS, abs=0.05)
    table = result.stdout
    assert "summary" in table and table.count(" ok ") == 3
    assert "trained" in table and table.count("from song 1") == 2
    # trained once: one voice in the store; the other two songs were given that model
    assert len(list(store.glob("voices/*/profile.npz"))) == 1
    first, *others = _voice_trained(store)
    assert first["cache_hit"] is False
    assert all(e["cache_hit"] is True for e in others)
    keys = {e["keys"]["voice_model"] for e in others}  # type: ignore[index]
    assert len(keys) == 2 and all(str(k).startswith("uploads/") for k in keys)

    # a folder of songs, the same voice again: reused from the store, still one voice
    again = subprocess.run(
        [SINGTOME, "cover", str(tracks[0].parent), "--voice", str(voice), "--store", str(store),
         "--out", str(tmp_path / "again"), "--format", "wav"],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["s0.wav", "s1.wav", "s2.wav"]
    assert "reused" in again.stdout
    assert len(list(store.glob("voices/*/profile.npz"))) == 1


def test_a_bad_song_does_not_stop_the_batch(songs: tuple[list[Path], Path], tmp_path: Path) -> None:
    tracks, voice = songs
    bad = tmp_path / "bad.mp3"
    bad.write_text("not a song")
    result = subprocess.run(
        [SINGTOME, "cover", str(bad), str(tracks[0]), "--voice", str(voice),
         "--store", str(tmp_path / "store"), "--out", f"{tmp_path / 'out'}/", "--format", "wav"],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not_audio" in result.stdout and " ok " in result.stdout
    assert (tmp_path / "out" / f"{tracks[0].stem}.wav").is_file()
    assert "Traceback" not in result.stderr


def test_submit_several_songs_and_wait_for_all(
    pipeline: Pipeline, songs: tuple[list[Path], Path]
) -> None:
    tracks, voice = songs
    pipeline.start_test_workers()
    env = {**pipeline.env, "COLUMNS": "200"}
    result = subprocess.run(
        [
            SINGTOME,
            "submit",
            *map(str, tracks),
            "--voice",
            str(voice),
            "--wait",
            "--timeout",
            "300",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("job ")]
    assert len(jobs) == 3 and len(set(jobs)) == 3
    ready = pipeline.by_job("track.ready", set(jobs), timeout_s=60)
    assert set(ready) == set(jobs)
    for job in jobs:
        assert job in result.stdout.split("summary", 1)[1]
    assert result.stdout.count(" ok ") == 3
