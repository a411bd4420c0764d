"""The event backbone against the real broker and S3 server, with copy-and-tag test stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

from schemas.events import (
    JobOptions,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    TrackReady,
    VoiceOptions,
)
from streams.client import publish, publish_raw_async
from streams.topics import SONG_UPLOADED, TRACK_FAILED, TRACK_READY, dlq
from tests.pipeline import SINGTOME, Pipeline, health, wait_job_in_hand

STAGES = ("separator", "trainer", "converter", "mixer")


def _submit(line: Pipeline, n: int, tag: str) -> dict[str, bytes]:
    """Upload n small 'songs' and publish song.uploaded for each; returns job id → song bytes."""
    events = line.songs(tag, n)
    publish(line.settings, *events)
    return {e.job_id: line.store.get_bytes(e.keys.song or "") for e in events}


def _expected_track(song: bytes) -> bytes:
    # Each test stage prefixes "<tag>:<output>:" to what it read.
    return b"mixed:track:converted:converted:separated:vocals:" + song


def _check_ready(line: Pipeline, ready: list[TrackReady], songs: dict[str, bytes]) -> None:
    assert sorted(e.job_id for e in ready) == sorted(songs)
    for event in ready:
        keys = event.keys
        for name in ("song", "vocals", "accompaniment", "voice_model", "converted_vocals", "track"):
            assert getattr(keys, name), f"{event.job_id}: keys.{name} missing"
        assert line.store.get_bytes(event.track_key) == _expected_track(songs[event.job_id])
        assert [r.stage for r in event.history] == list(STAGES)


def test_twenty_jobs_through_four_worker_processes(pipeline: Pipeline) -> None:
    ports = pipeline.start_test_workers()
    songs = _submit(pipeline, 20, "bulk")
    ready = pipeline.events(TRACK_READY, until=20, timeout_s=120)
    assert len(ready) == 20, "exactly one track.ready per job"
    _check_ready(pipeline, ready, songs)  # type: ignore[arg-type]
    state = json.loads(pipeline.store.get_bytes(f"jobs/{ready[0].job_id}/track.ready.json"))
    assert state["track_key"] == ready[0].track_key
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['mixer']}/metrics") as response:
        metrics = response.read().decode()
    assert 'singtome_events_out_total{stage="mixer"} 20.0' in metrics
    assert 'singtome_stage_seconds_count{stage="mixer"} 20.0' in metrics
    assert health(ports["mixer"])["jobs_done"] == 20
    status = subprocess.run(
        [SINGTOME, "status", ready[0].job_id],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(status.stdout)
    assert set(shown) >= {"vocals.separated", "voice.trained", "vocals.converted", "track.ready"}
    missing = subprocess.run(
        [SINGTOME, "status", "no-such-job"], env=pipeline.env, capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no job" in missing.stderr
    for proc in pipeline.procs:  # every log line: one JSON object naming its stage and job
        lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]  # type: ignore[attr-defined]
        records = [json.loads(line) for line in lines]
        assert records and all("stage" in r and "job_id" in r for r in records)
        assert {r["job_id"] for r in records if r["event"] == "stage done"} == set(songs)


def test_bad_events_fail_with_codes_and_dlq_while_good_ones_complete(pipeline: Pipeline) -> None:
    pipeline.start_test_workers()
    good = SongUploaded(
        job_id="bad-v",
        keys=ObjectKeys(song="x"),
        options=JobOptions(voice=VoiceOptions(dataset_key="uploads/bad-v/voice/")),
    ).model_dump(mode="json")
    unknown_version = {**good, "job_id": "bad-version", "schema_version": "2.0"}
    missing = SongUploaded(
        job_id="bad-missing",
        keys=ObjectKeys(song="uploads/bad-missing/nothing-here.wav"),
        options=JobOptions(voice=VoiceOptions(dataset_key="uploads/bad-missing/voice/")),
    )
    import asyncio

    asyncio.run(
        publish_raw_async(
            pipeline.settings,
            SONG_UPLOADED,
            [
                (b"bad-json", b"{this is not json"),
                (b"bad-version", json.dumps(unknown_version).encode()),
            ],
        )
    )
    publish(pipeline.settings, missing)
    songs = _submit(pipeline, 1, "after-bad")

    failed = pipeline.events(TRACK_FAILED, until=3, timeout_s=60)
    codes = {e.job_id: e.code for e in failed if isinstance(e, TrackFailed)}
    assert codes == {
        "bad-json": "malformed_event",
        "bad-version": "unsupported_schema_version",
        "bad-missing": "missing_object",
    }
    for event in failed:
        assert event.stage == "separator" and event.source_topic == SONG_UPLOADED
        assert event.message
    assert "2.0" in next(e.message for e in failed if e.job_id == "bad-version")

    dead = pipeline.read(dlq(SONG_UPLOADED), until=3, timeout_s=30)
    originals = {value for _, value in dead}
    assert b"{this is not json" in originals
    assert json.dumps(unknown_version).encode() in originals
    assert {h["singtome-error-code"] for h, _ in dead} == {
        b"malformed_event",
        b"unsupported_schema_version",
        b"missing_object",
    }
    ready = pipeline.events(TRACK_READY, until=1, timeout_s=60)
    _check_ready(pipeline, ready, songs)  # type: ignore[arg-type]


def test_kill_9_while_holding_a_job_loses_nothing(pipeline: Pipeline) -> None:
    for stage in ("separator", "converter", "mixer"):
        pipeline.start_worker(stage, f"tests.stages:{stage}")
    # A slow trainer, so it is certainly holding a job when it is killed.
    slow, port = pipeline.start_worker(
        "trainer", "tests.stages:trainer", env={"SINGTOME_TEST_STAGE_SLEEP_S": "4"}
    )
    songs = _submit(pipeline, 6, "kill")
    held = wait_job_in_hand(port)
    deadline = time.monotonic() + 30
    while not pipeline.count(f"jobs/{held}/seen/trainer/"):  # the delivery is on record
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(slow.pid, signal.SIGKILL)
    slow.wait()
    pipeline.start_worker(
        "trainer", "tests.stages:trainer", env={"SINGTOME_TEST_STAGE_SLEEP_S": "1"}
    )

    ready = pipeline.events(TRACK_READY, until=6, timeout_s=180)
    by_job: dict[str, list[TrackReady]] = {}
    for event in ready:
        by_job.setdefault(event.job_id, []).append(event)  # type: ignore[arg-type]
    assert sorted(by_job) == sorted(songs), "every job completed, none lost"
    _check_ready(pipeline, [events[0] for events in by_job.values()], songs)
    for events in by_job.values():  # duplicates, if any, point at the same objects
        assert {e.track_key for e in events} == {events[0].track_key}
    # The job in hand was redelivered to the new trainer, and the redelivery was recorded.
    assert pipeline.count(f"jobs/{held}/duplicates/trainer/") >= 1


def test_replay_into_new_group_reuses_outputs(pipeline: Pipeline) -> None:
    pipeline.start_test_workers()
    songs = _submit(pipeline, 3, "replay")
    first = pipeline.events(TRACK_READY, until=3, timeout_s=90)
    _check_ready(pipeline, first, songs)  # type: ignore[arg-type]

    def computed() -> dict[str, int]:
        return {
            stage: sum(pipeline.count(f"counters/{job}/{stage}/") for job in songs)
            for stage in STAGES
        }

    assert computed() == dict.fromkeys(STAGES, 3)

    result = subprocess.run(
        [SINGTOME, "replay", SONG_UPLOADED, "--from-offset", "0", "--to-group", "replay-1"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["group"] == "replay-1"
    pipeline.start_worker("separator", "tests.stages:separator", group="replay-1")

    ready = pipeline.events(TRACK_READY, until=6, timeout_s=90)
    assert len(ready) == 6
    tracks: dict[str, set[str]] = {}
    for event in ready:
        tracks.setdefault(event.job_id, set()).add(event.track_key)  # type: ignore[attr-defined]
    assert all(len(keys) == 1 for keys in tracks.values()), "replays reference the same objects"
    assert computed() == dict.fromkeys(STAGES, 3), "nothing was recomputed"
    for job_id in songs:
        # The replayed song.uploaded is the same event, seen again; so is every event after it,
        # whose id is derived from its input's id and the stage.
        for stage in STAGES:
            assert pipeline.count(f"jobs/{job_id}/duplicates/{stage}/") == 1, stage
