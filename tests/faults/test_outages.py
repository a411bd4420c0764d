"""S3 and broker outages with jobs in flight."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from schemas.events import TrackFailed
from streams.client import publish
from streams.stack import StackConfig, down, start_broker, start_s3, stop_service, up
from streams.topics import TRACK_READY, VOCALS_SEPARATED
from tests.pipeline import SINGTOME, Pipeline, stack_port, wait_job_in_hand


def test_s3_outage_is_retried_and_jobs_complete(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    _, port = pipeline.start_worker(
        "separator",
        "tests.stages:separator",
        env={
            "SINGTOME_TEST_STAGE_SLEEP_S": "2",
            "SINGTOME_TRANSIENT_RETRIES": "12",
            "SINGTOME_RETRY_BACKOFF_S": "1",
            "SINGTOME_RETRY_BACKOFF_MAX_S": "4",
            "SINGTOME_S3_MAX_ATTEMPTS": "2",
        },
    )
    events = pipeline.songs("s3-outage", 4)
    publish(pipeline.settings, *events)
    wait_job_in_hand(port)
    stop_service(stack, "s3")
    try:
        time.sleep(30)
    finally:
        start_s3(stack)
    done = pipeline.by_job(VOCALS_SEPARATED, {e.job_id for e in events}, timeout_s=180)
    assert set(done) == {e.job_id for e in events}
    assert not pipeline.read("track.failed", until=0, timeout_s=2), "nothing failed"


def test_s3_outage_past_the_retry_bound_fails_retriable_and_replay_resumes(
    pipeline: Pipeline,
) -> None:
    stack = pipeline.stack
    _, port = pipeline.start_worker(
        "separator",
        "tests.stages:separator",
        env={
            "SINGTOME_TEST_STAGE_SLEEP_S": "2",
            "SINGTOME_TRANSIENT_RETRIES": "2",
            "SINGTOME_RETRY_BACKOFF_S": "0.5",
            "SINGTOME_S3_MAX_ATTEMPTS": "1",
        },
    )
    (event,) = pipeline.songs("s3-down", 1)
    publish(pipeline.settings, event)
    wait_job_in_hand(port)
    stop_service(stack, "s3")
    try:
        failed = pipeline.by_job("track.failed", {event.job_id}, timeout_s=90)[event.job_id]
    finally:
        start_s3(stack)
    assert isinstance(failed, TrackFailed)
    assert failed.code == "store_unavailable" and failed.retriable and failed.attempt == 3

    subprocess.run(
        [SINGTOME, "replay", "song.uploaded", "--from-offset", "0", "--job-id", event.job_id],
        env=pipeline.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert pipeline.by_job(VOCALS_SEPARATED, {event.job_id}, timeout_s=120)


@pytest.fixture
def durable_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """A second stack whose broker keeps its log in S3, so it survives a restart."""
    cfg = StackConfig(
        root=tmp_path_factory.mktemp("durable"),
        kafka_port=stack_port("DURABLE_KAFKA", 25092),
        s3_port=stack_port("DURABLE_S3", 23333),
        bucket="singtome-durable",
        durable_broker=True,
    )
    up(cfg)
    try:
        yield cfg
    finally:
        down(cfg)


def test_broker_restart_with_jobs_in_flight_loses_nothing(
    durable_stack: StackConfig, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    line = Pipeline(durable_stack, logs=tmp_path)
    try:
        line.start_test_workers(env={"SINGTOME_TEST_STAGE_SLEEP_S": "0.5"})
        events = line.songs("broker", 8)
        publish(line.settings, *events)
        time.sleep(3)  # some jobs are between stages now
        stop_service(durable_stack, "broker")
        time.sleep(5)
        start_broker(durable_stack)
        done = line.by_job(TRACK_READY, {e.job_id for e in events}, timeout_s=240)
        assert set(done) == {e.job_id for e in events}, "every job completed after the restart"
        assert all(p.poll() is None for p in line.procs), "workers reconnected by themselves"
    finally:
        line.stop()
