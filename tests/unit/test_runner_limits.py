"""The runner's limits, with an in-process emitter and store: DLQ copies too large for the broker
(claim check), sends the broker refuses or never acknowledges, and a stage call stuck past its
timeout. Each test fails when its guarantee breaks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Event, ObjectKeys, SongUploaded, TrackFailed, VocalsSeparated, encode
from streams.keys import sha256_bytes
from streams.runner import CLAIM_CHECK_HEADER, Runner, SendError
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore
from streams.topics import STAGES
from streams.worker import FaustEmitter
from tests.events import voice_options

KIB = 1024


class BrokerEmitter:
    """An emitter that behaves like a broker with a size limit, and can be made unreachable
    for some topics (SendError after the retries, as FaustEmitter raises it)."""

    def __init__(self, limit: int = 64 * KIB, down: set[str] | None = None) -> None:
        self.limit = limit
        self.down = down or set()
        self.sent: list[tuple[str, str, bytes, dict[str, bytes] | None]] = []
        self.refused: list[str] = []

    async def send(
        self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None = None
    ) -> None:
        if topic in self.down or "*" in self.down:
            self.refused.append(topic)
            raise SendError(topic, "KafkaTimeoutError: no broker")
        if len(value) > self.limit:
            self.refused.append(topic)
            raise SendError(topic, "MessageSizeTooLargeError", too_large=True)
        self.sent.append((topic, key, value, headers))

    def on(self, topic: str) -> list[tuple[bytes, dict[str, bytes]]]:
        return [(v, h or {}) for t, _, v, h in self.sent if t == topic]


def _separated(event: Event, ctx: StageContext) -> Event:
    return event.follow(
        VocalsSeparated,
        keys=event.keys.model_copy(
            update={"vocals": "stems/x/vocals.flac", "accompaniment": "stems/x/accomp.flac"}
        ),
        sample_rate=44100,
        duration_s=1.0,
        separator_model="test",
    )


def _runner(tmp_path: Path, handler: Any, emitter: Any, **settings: Any) -> Runner:
    async def no_sleep(_: float) -> None:
        return None

    return Runner(
        stage=STAGES["separator"],
        handler=handler,
        settings=Settings(**settings),
        store=LocalStore(tmp_path / "store"),
        emitter=emitter,
        sleep=no_sleep,
    )


def _padded_event(size: int, job_id: str = "big-1") -> bytes:
    """A valid song.uploaded of about ``size`` bytes (the padding is in the title)."""
    event = SongUploaded(
        job_id=job_id,
        keys=ObjectKeys(song=f"uploads/{job_id}/song.wav"),
        options=voice_options(job_id),
    )
    event.options.output.title = "x" * size
    return encode(event)


def _failure(emitter: BrokerEmitter) -> TrackFailed:
    (value, _), *_ = emitter.on("track.failed")
    return TrackFailed.model_validate_json(value)


def test_an_event_too_large_for_the_broker_goes_to_s3_with_a_reference_in_the_dlq(
    tmp_path: Path,
) -> None:
    emitter = BrokerEmitter(limit=64 * KIB)
    runner = _runner(
        tmp_path,
        _separated,
        emitter,
        broker={"max_event_bytes": 32 * KIB, "max_message_bytes": 64 * KIB},
    )
    raw = _padded_event(200 * KIB)
    outcome = asyncio.run(runner.process(raw, b"big-1", partition=3, offset=17))
    assert outcome.status == "failed" and outcome.answered
    assert _failure(emitter).code == "event_too_large" and _failure(emitter).job_id == "big-1"
    ((reference, headers),) = emitter.on("song.uploaded.dlq")
    assert len(reference) < 2 * KIB, "a small reference record, not the event"
    record = json.loads(reference)
    key = record["claim_check"]["key"]
    assert key.startswith("dlq/song.uploaded/3-17-") and record["claim_check"]["stored"]
    assert headers[CLAIM_CHECK_HEADER] == key.encode()
    assert headers["singtome-error-code"] == b"event_too_large"
    assert (record["partition"], record["offset"], record["bytes"]) == (3, 17, len(raw))
    assert record["sha256"] == sha256_bytes(raw)
    assert runner.store.get_bytes(key) == raw, "the original, byte for byte"
    assert not emitter.refused, "the size was known before any send"
    assert runner.metrics.claim_checks.labels("separator")._value.get() == 1


def test_everything_the_broker_refuses_as_too_large_still_ends_in_one_answer(
    tmp_path: Path,
) -> None:
    # The worker's limit says 12 KiB fits, the broker (a misconfigured topic) takes 8 KiB: the
    # output is refused, so is the DLQ copy (it goes to S3) and the full track.failed, which
    # carries the input's options (a slim one goes out). No refusal is retried.
    emitter = BrokerEmitter(limit=8 * KIB)
    runner = _runner(tmp_path, _separated, emitter, broker={"max_event_bytes": 20 * KIB})
    raw = _padded_event(12 * KIB)
    outcome = asyncio.run(runner.process(raw, None, partition=0, offset=5))
    assert outcome.status == "failed" and outcome.answered
    assert emitter.refused == ["vocals.separated", "song.uploaded.dlq", "track.failed"]
    ((reference, headers),) = emitter.on("song.uploaded.dlq")
    key = headers[CLAIM_CHECK_HEADER].decode()
    assert json.loads(reference)["claim_check"]["key"] == key
    assert runner.store.get_bytes(key) == raw
    failure = _failure(emitter)
    assert (failure.job_id, failure.code, failure.retriable) == ("big-1", "output_too_large", False)
    assert outcome.failure and failure.event_id == outcome.failure.event_id


def test_an_output_too_large_for_the_broker_is_answered_with_track_failed(
    tmp_path: Path,
) -> None:
    def huge_output(event: Event, ctx: StageContext) -> Event:
        out = _separated(event, ctx)
        out.options.output.title = "y" * (80 * KIB)
        return out

    emitter = BrokerEmitter(limit=64 * KIB)
    runner = _runner(
        tmp_path,
        huge_output,
        emitter,
        broker={"max_event_bytes": 32 * KIB, "max_message_bytes": 64 * KIB},
    )
    raw = encode(
        SongUploaded(
            job_id="out-1",
            keys=ObjectKeys(song="uploads/out-1/s.wav"),
            options=voice_options("out-1"),
        )
    )
    outcome = asyncio.run(runner.process(raw))
    assert outcome.status == "failed" and outcome.answered
    failure = _failure(emitter)
    assert failure.code == "output_too_large" and not failure.retriable
    assert emitter.on("song.uploaded.dlq")[0][0] == raw, "the input is small: copied inline"
    assert runner.metrics.send_failures.labels("separator", "vocals.separated")._value.get() == 1


def test_a_broker_that_never_acknowledges_is_recorded_and_the_message_left_unanswered(
    tmp_path: Path,
) -> None:
    emitter = BrokerEmitter(down={"*"})
    runner = _runner(tmp_path, _separated, emitter)
    raw = encode(
        SongUploaded(
            job_id="gone-1",
            keys=ObjectKeys(song="uploads/gone-1/s.wav"),
            options=voice_options("gone-1"),
        )
    )
    outcome = asyncio.run(runner.process(raw))  # never raises
    assert outcome.status == "failed" and not outcome.answered
    assert outcome.failure and outcome.failure.code == "broker_unavailable"
    assert outcome.failure.retriable
    failures = runner.metrics.send_failures
    for topic in ("vocals.separated", "song.uploaded.dlq", "track.failed"):
        assert failures.labels("separator", topic)._value.get() == 1, topic
    assert runner.metrics.unanswered.labels("separator")._value.get() == 1


def test_a_lost_dlq_copy_still_gets_its_track_failed_out(tmp_path: Path) -> None:
    emitter = BrokerEmitter(down={"song.uploaded.dlq"})
    runner = _runner(tmp_path, _separated, emitter)
    outcome = asyncio.run(runner.process(b"\x00 not an event"))
    assert outcome.status == "failed" and outcome.answered
    assert _failure(emitter).code == "malformed_event"


def test_a_stuck_stage_is_answered_at_once_and_its_state_written_beside_it(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    progressed_late: list[float] = []

    def stuck(event: Event, ctx: StageContext) -> Event:
        release.wait(30)
        ctx.progress(0.99, "too late")  # after the timeout: must go nowhere
        progressed_late.append(time.monotonic())
        return _separated(event, ctx)

    emitter = BrokerEmitter()
    runner = _runner(tmp_path, stuck, emitter, runtime={"stage_timeout_s": 0.5})
    event = SongUploaded(
        job_id="stuck-1",
        keys=ObjectKeys(song="uploads/stuck-1/s.wav"),
        options=voice_options("stuck-1"),
    )

    async def scenario() -> float:
        started = time.monotonic()
        outcome = await runner.process(encode(event))
        elapsed = time.monotonic() - started
        assert outcome.failure and outcome.failure.code == "timeout"
        assert outcome.failure.retriable and outcome.answered
        return elapsed

    try:
        elapsed = asyncio.run(scenario())
        # With job-state writes queued behind the stuck call this would wait for `release`.
        assert elapsed < 3.0, f"answered {elapsed:.1f} s after the start"
        assert not release.is_set()
        assert runner.store.exists("jobs/stuck-1/track.failed.json"), "state written meanwhile"
        assert runner.stuck_call is not None and not runner.stuck_call.done()
        assert [t for t, *_ in emitter.sent if t != "job.progress"] == [
            "song.uploaded.dlq",
            "track.failed",
        ]
    finally:
        release.set()
    assert runner.stuck_call is not None
    runner.stuck_call.result(timeout=10)
    assert progressed_late, "the call ran on to its end"
    late = [v for t, _, v, _ in emitter.sent if t == "job.progress" and b"too late" in v]
    assert late == [], "no progress after the job was answered"
    assert runner.metrics.stuck_calls.labels("separator")._value.get() == 1


class _FakeTopic:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def send(self, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


class _FakeApp:
    def __init__(self, topic: _FakeTopic) -> None:
        self._topic = topic

    def topic(self, *args: Any, **kwargs: Any) -> _FakeTopic:
        return self._topic


def test_faust_emitter_retries_an_unreachable_broker_a_bounded_number_of_times() -> None:
    from aiokafka.errors import KafkaConnectionError

    topic = _FakeTopic(KafkaConnectionError("connection refused"))
    settings = Settings(
        broker={"send_retries": 3}, runtime={"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.02}
    )
    emitter = FaustEmitter(_FakeApp(topic), settings)  # type: ignore[arg-type]
    with pytest.raises(SendError) as caught:
        asyncio.run(emitter.send("track.failed", "job", b"{}"))
    assert topic.calls == 4, "one try and three retries, then give up"
    assert not caught.value.permanent and not caught.value.too_large


def test_faust_emitter_does_not_retry_a_size_refusal() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    topic = _FakeTopic(MessageSizeTooLargeError("too big"))
    emitter = FaustEmitter(_FakeApp(topic), Settings(broker={"send_retries": 5}))  # type: ignore[arg-type]
    with pytest.raises(SendError) as caught:
        asyncio.run(emitter.send("song.uploaded.dlq", "job", b"x"))
    assert topic.calls == 1 and caught.value.too_large and caught.value.permanent


def test_an_event_limit_above_the_broker_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="MAX_EVENT_BYTES"):
        Settings(broker={"max_event_bytes": 2 * 1024 * KIB, "max_message_bytes": 1024 * KIB})


def test_one_message_size_limit_for_topics_producers_and_the_worker() -> None:
    from streams.admin import producer_kwargs, topic_configs
    from streams.worker import create_app

    settings = Settings(broker={"max_message_bytes": 3 * 1024 * KIB}, runtime={"health_port": 1})
    assert int(topic_configs(settings)["max.message.bytes"]) == settings.broker.max_message_bytes
    assert producer_kwargs(settings)["max_request_size"] == settings.broker.max_message_bytes
    app, _, _ = create_app("separator", settings, "tests.stages:separator")
    assert app.conf.producer_max_request_size == settings.broker.max_message_bytes
