"""S3 and broker outages with jobs in flight."""

from __future__ import annotations

import subprocess
import time

from frontends.stack import broker_info, start_broker, stop_broker
from schemas.events import TrackFailed
from streams.client import publish
from streams.topics import TRACK_READY, VOCALS_SEPARATED
from tests.pipeline import SINGTOME, Pipeline, TcpProxy, health, wait_job_in_hand

# The workers reach S3 through a proxy the tests cut: an S3 outage as the workers see it. (tansu
# keeps its own log in the same S3 server, so stopping that server would stop the broker as well,
# which production's separate S3 and Kafka do not do.)


def test_s3_outage_is_retried_and_jobs_complete(pipeline: Pipeline) -> None:
    s3 = TcpProxy(pipeline.stack.s3_port)
    try:
        _, port = pipeline.start_worker(
            "separator",
            "tests.stages:separator",
            env={
                "AWS_ENDPOINT_URL_S3": s3.url,
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
        s3.cut()
        try:
            time.sleep(30)
        finally:
            s3.restore()
        done = pipeline.by_job(VOCALS_SEPARATED, {e.job_id for e in events}, timeout_s=180)
        assert set(done) == {e.job_id for e in events}
        assert not pipeline.read("track.failed", until=0, timeout_s=2), "nothing failed"
    finally:
        pipeline.stop()
        s3.close()


def test_s3_outage_past_the_retry_bound_fails_retriable_and_replay_resumes(
    pipeline: Pipeline,
) -> None:
    s3 = TcpProxy(pipeline.stack.s3_port)
    try:
        _, port = pipeline.start_worker(
            "separator",
            "tests.stages:separator",
            env={
                "AWS_ENDPOINT_URL_S3": s3.url,
                # the job writes its outputs at the end of this hold: long enough for the cut
                # to come first on a loaded machine
                "SINGTOME_TEST_STAGE_SLEEP_S": "8",
                "SINGTOME_TRANSIENT_RETRIES": "2",
                "SINGTOME_RETRY_BACKOFF_S": "0.5",
                "SINGTOME_S3_MAX_ATTEMPTS": "1",
            },
        )
        (event,) = pipeline.songs("s3-down", 1)
        publish(pipeline.settings, event)
        wait_job_in_hand(port)
        s3.cut()
        try:
            failed = pipeline.by_job("track.failed", {event.job_id}, timeout_s=90)[event.job_id]
        finally:
            s3.restore()
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
    finally:
        pipeline.stop()
        s3.close()


def test_broker_restart_with_jobs_in_flight_loses_nothing(pipeline: Pipeline) -> None:
    """Apache Kafka (the session's stack) stopped and started again under four workers: its log
    is on disk, so topics, offsets and groups are all there after the restart."""
    assert broker_info(pipeline.stack)["kind"] == "kafka"
    restart_with_jobs_in_flight(pipeline)


def restart_with_jobs_in_flight(line: Pipeline) -> None:
    ports = line.start_test_workers(env={"SINGTOME_TEST_STAGE_SLEEP_S": "0.5"})
    events = line.songs("broker", 8)
    publish(line.settings, *events)
    time.sleep(3)  # some jobs are between stages now
    stop_broker(line.stack)
    try:
        # /health says what is true: nobody is consuming while the broker is away.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not any(health(port).get("ready") for port in ports.values()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("a worker reported ready while the broker was away")
    finally:
        start_broker(line.stack)
    done = line.by_job(TRACK_READY, {e.job_id for e in events}, timeout_s=240)
    assert set(done) == {e.job_id for e in events}, "every job completed after the restart"
    assert all(p.poll() is None for p in line.procs), "workers reconnected by themselves"
    for stage, port in ports.items():
        line.wait_ready(line.procs[list(ports).index(stage)], port, timeout_s=60)
