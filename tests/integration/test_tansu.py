"""The smoke set on tansu, the no-JVM broker `singtome stack up --broker tansu` runs (durable:
its log in the local S3 server). The full integration and fault suites run on Apache Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontends.stack import StackConfig, broker_info, down, up
from streams.client import publish, publish_raw_async
from streams.topics import SONG_UPLOADED, TRACK_FAILED, TRACK_READY
from tests.faults.test_outages import restart_with_jobs_in_flight
from tests.pipeline import Pipeline, stack_port


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    cfg = StackConfig(
        root=tmp_path_factory.mktemp("tansu"),
        kafka_port=stack_port("TANSU_KAFKA", 27092),
        s3_port=stack_port("TANSU_S3", 26333),
        bucket="singtome-tansu",
        durable_broker=True,
        broker="tansu",
    )
    up(cfg)
    try:
        yield cfg
    finally:
        down(cfg)


def test_jobs_and_a_bad_event_on_tansu(tansu: StackConfig, tmp_path: Path) -> None:
    assert broker_info(tansu)["kind"] == "tansu"
    line = Pipeline(tansu, logs=tmp_path)
    try:
        line.start_test_workers()
        events = line.songs("tansu", 5)
        publish(line.settings, *events)
        asyncio.run(publish_raw_async(line.settings, SONG_UPLOADED, [(b"bad", b"{not json")]))
        ready = line.by_job(TRACK_READY, {e.job_id for e in events}, timeout_s=120)
        assert set(ready) == {e.job_id for e in events}
        failed = line.by_job(TRACK_FAILED, {"bad"}, timeout_s=60)
        assert failed["bad"].code == "malformed_event"  # type: ignore[attr-defined]
    finally:
        line.stop()


def test_tansu_restart_with_jobs_in_flight_loses_nothing(
    tansu: StackConfig, tmp_path: Path
) -> None:
    line = Pipeline(tansu, logs=tmp_path)
    try:
        restart_with_jobs_in_flight(line)
    finally:
        line.stop()
