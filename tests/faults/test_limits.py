"""Limits and wedges against the real broker and S3 server: an event too large for the broker, a
stage call that never returns, and SIGTERM of workers around a broker restart. Each test fails
when its guarantee breaks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from frontends.stack import StackConfig, start_broker, stop_service
from schemas.events import ObjectKeys, SongUploaded, TrackFailed, encode
from streams.admin import kafka_client_kwargs
from streams.client import publish
from streams.runner import CLAIM_CHECK_HEADER
from streams.topics import SONG_UPLOADED, TRACK_FAILED, VOCALS_SEPARATED, dlq
from streams.worker import EXIT_STUCK
from tests.events import voice_options
from tests.pipeline import Pipeline, health, wait_job_in_hand

SEPARATOR = "tests.stages:separator"
MIB = 1024 * 1024


async def _publish_big(line: Pipeline, key: bytes, value: bytes) -> None:
    """A producer whose max request size was raised past the broker limit the workers use."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **kafka_client_kwargs(line.settings), acks="all", max_request_size=8 * MIB
    )
    await producer.start()
    try:
        await producer.send_and_wait(line.topic(SONG_UPLOADED), value, key=key)
    finally:
        await producer.stop()


def _wait(what: str, check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def test_an_oversized_event_is_answered_kept_in_s3_and_the_next_job_completes(
    stack: StackConfig, tmp_path: Path
) -> None:
    # The song topic takes 4 MiB (a topic configured apart from the rest); the workers, the
    # DLQ topic and the producer keep the 1 MiB of SINGTOME_MAX_MESSAGE_BYTES.
    line = Pipeline(stack, logs=tmp_path, topic_max_bytes={SONG_UPLOADED: 4 * MIB})
    try:
        proc, port = line.start_worker("separator", SEPARATOR)
        big = SongUploaded(
            job_id="big-0001",
            keys=ObjectKeys(song="uploads/big-0001/song.wav"),
            options=voice_options("big-0001"),
        )
        big.options.output.title = "x" * (2 * MIB)
        raw = encode(big)
        assert len(raw) > 2 * MIB > line.settings.broker.max_message_bytes
        asyncio.run(_publish_big(line, big.job_id.encode(), raw))
        (good,) = line.songs("after-big", 1)
        publish(line.settings, good)

        failed = line.by_job(TRACK_FAILED, {big.job_id}, timeout_s=60)[big.job_id]
        assert isinstance(failed, TrackFailed)
        assert failed.code == "event_too_large" and not failed.retriable
        ((headers, reference),) = line.read(dlq(SONG_UPLOADED), until=1, timeout_s=30)
        assert len(reference) < 4096, "a reference record in the DLQ topic, not the event"
        key = headers[CLAIM_CHECK_HEADER].decode()
        record = json.loads(reference)
        assert record["claim_check"] == {"bucket": stack.bucket, "key": key, "stored": True}
        assert key.startswith(f"dlq/{SONG_UPLOADED}/{record['partition']}-{record['offset']}-")
        assert record["bytes"] == len(raw)
        assert line.store.get_bytes(key) == raw, "the original, byte for byte, in S3"
        assert headers["singtome-error-code"] == b"event_too_large"

        done = line.by_job(VOCALS_SEPARATED, {good.job_id}, timeout_s=60)
        assert good.job_id in done, "the next job completes"
        assert proc.poll() is None and health(port).get("ready"), "no restart, still serving"
        assert len(line.read(TRACK_FAILED, until=1, timeout_s=5)) == 1, "answered once"
    finally:
        line.stop()


def test_a_stage_stuck_forever_is_answered_then_the_worker_exits_to_be_restarted(
    pipeline: Pipeline,
) -> None:
    timeout_s, grace_s, leave_s = 3.0, 6.0, 5.0
    env = {
        "SINGTOME_STAGE_TIMEOUT_S": str(timeout_s),
        "SINGTOME_STUCK_GRACE_S": str(grace_s),
        "SINGTOME_SHUTDOWN_LEAVE_S": str(leave_s),
    }
    proc, port = pipeline.start_worker("separator", "tests.stages:stuck", env=env)
    (event,) = pipeline.songs("stuck", 1)
    publish(pipeline.settings, event)
    wait_job_in_hand(port)
    taken = time.time()  # no earlier than the stage call's start

    (record,) = pipeline.records(TRACK_FAILED, until=1, timeout_s=30)
    failed = TrackFailed.model_validate_json(record.value)
    assert failed.job_id == event.job_id and failed.code == "timeout" and failed.retriable
    answered_after = record.timestamp / 1000 - taken
    assert answered_after < timeout_s + 2, f"track.failed {answered_after:.1f} s after the start"
    (_, original), *_ = pipeline.read(dlq(SONG_UPLOADED), until=1, timeout_s=10)
    assert original == encode(event)

    def unhealthy() -> bool:
        body = health(port)
        return body.get("ready") is False and "past its timeout" in " ".join(body["problems"])

    _wait("/health turns 503 on the stuck call", unhealthy, grace_s)
    code = proc.wait(timeout=grace_s + leave_s + 20)
    assert code == EXIT_STUCK, f"exit status {code}"

    # The orchestrator restarts the worker: the answered job is committed, not taken again.
    proc, port = pipeline.start_worker("separator", SEPARATOR)
    (good,) = pipeline.songs("after-stuck", 1)
    publish(pipeline.settings, good)
    done = pipeline.by_job(VOCALS_SEPARATED, {good.job_id}, timeout_s=60)
    assert set(done) == {good.job_id}
    time.sleep(2)
    assert health(port)["jobs_done"] == 1, "the stuck job was not redelivered"
    assert pipeline.count(f"counters/{event.job_id}/separator/") == 1, "called once"
    assert len(pipeline.read(TRACK_FAILED, until=1, timeout_s=5)) == 1


def _sigterm_all(procs: list[subprocess.Popen[bytes]], bound_s: float) -> list[float]:
    """SIGTERM each process; the seconds each took to exit (asserting the bound)."""
    started = time.monotonic()
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    took = []
    for proc in procs:
        try:
            proc.wait(timeout=max(bound_s - (time.monotonic() - started), 0.1))
        except subprocess.TimeoutExpired:
            log = proc.log_path.read_text()[-2000:]  # type: ignore[attr-defined]
            message = f"a worker still runs {bound_s:.0f} s after SIGTERM:\n{log}"
            raise AssertionError(message) from None
        took.append(time.monotonic() - started)
        assert proc.returncode == 0, f"exit status {proc.returncode}"
    return took


def test_sigterm_ends_idle_workers_around_a_broker_restart(pipeline: Pipeline) -> None:
    grace_s, leave_s = 5.0, 5.0
    env = {"SINGTOME_SHUTDOWN_GRACE_S": str(grace_s), "SINGTOME_SHUTDOWN_LEAVE_S": str(leave_s)}
    pipeline.start_test_workers(env=env)
    events = pipeline.songs("term", 4)
    publish(pipeline.settings, *events)
    pipeline.by_job("track.ready", {e.job_id for e in events}, timeout_s=120)
    workers = list(pipeline.procs)
    bound_s = grace_s + leave_s + 3  # the promise, plus a little for a loaded machine

    stack = pipeline.stack
    stop_service(stack, "broker")
    try:
        time.sleep(3)
        # Not connected: half of the workers are stopped while the broker is away...
        _sigterm_all(workers[:2], bound_s)
    finally:
        start_broker(stack)
    # ...and the others just after it is back, while they reconnect and rejoin their groups.
    time.sleep(2)
    _sigterm_all(workers[2:], bound_s)
