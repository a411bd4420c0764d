from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from foundation.errors import StageError, TransientError
from schemas.events import (
    Event,
    JobOptions,
    JobProgress,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    VocalsSeparated,
    VoiceOptions,
    encode,
)
from streams.runner import Runner
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore, TransientStoreError
from streams.topics import STAGES
from tests.events import voice_options


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:32]


class ListEmitter:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, dict[str, bytes] | None]] = []

    async def send(
        self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None = None
    ) -> None:
        self.sent.append((topic, key, value, headers))

    def topics(self) -> list[str]:
        return [t for t, *_ in self.sent if t != "job.progress"]

    def last(self, topic: str) -> bytes:
        return [v for t, _, v, _ in self.sent if t == topic][-1]


def _separated(event: Event, ctx: StageContext) -> Event:
    ctx.progress(0.5, "half way")
    ctx.store.put_bytes("stems/x/vocals.flac", ctx.store.get_bytes(event.keys.song or ""))
    return event.follow(
        VocalsSeparated,
        keys=event.keys.model_copy(
            update={"vocals": "stems/x/vocals.flac", "accompaniment": "stems/x/accompaniment.flac"}
        ),
        sample_rate=44100,
        duration_s=1.0,
        separator_model="test",
    )


def _runner(tmp_path: Path, handler, **settings: object) -> tuple[Runner, ListEmitter]:  # type: ignore[no-untyped-def]
    emitter = ListEmitter()

    async def no_sleep(_: float) -> None:
        return None

    runner = Runner(
        stage=STAGES["separator"],
        handler=handler,
        settings=Settings(**settings),  # type: ignore[arg-type]
        store=LocalStore(tmp_path / "store"),
        emitter=emitter,
        sleep=no_sleep,
    )
    return runner, emitter


def _event(store: LocalStore, job_id: str = "job-1") -> SongUploaded:
    store.put_bytes(f"uploads/{job_id}/song.wav", b"audio")
    return SongUploaded(
        job_id=job_id,
        keys=ObjectKeys(song=f"uploads/{job_id}/song.wav"),
        options=JobOptions(voice=VoiceOptions(dataset_key=f"uploads/{job_id}/voice/")),
    )


def test_good_event_is_answered_with_history_and_state(tmp_path: Path) -> None:
    runner, emitter = _runner(tmp_path, _separated)
    event = _event(runner.store)  # type: ignore[arg-type]
    outcome = asyncio.run(runner.process(encode(event)))
    assert outcome.status == "done" and not outcome.duplicate
    assert emitter.topics() == ["vocals.separated"]
    out = VocalsSeparated.model_validate_json(emitter.last("vocals.separated"))
    assert out.keys.vocals == "stems/x/vocals.flac"
    assert [r.stage for r in out.history] == ["separator"]
    assert out.history[0].finished_at >= out.history[0].started_at
    state = json.loads(runner.store.get_bytes("jobs/job-1/vocals.separated.json"))
    assert state["event_id"] == out.event_id
    progress = [
        JobProgress.model_validate_json(v) for t, _, v, _ in emitter.sent if t == "job.progress"
    ]
    assert any(p.fraction == 0.5 and p.message == "half way" for p in progress)


def test_redelivery_is_counted_as_duplicate(tmp_path: Path) -> None:
    runner, _ = _runner(tmp_path, _separated)
    raw = encode(_event(runner.store))  # type: ignore[arg-type]
    assert not asyncio.run(runner.process(raw)).duplicate
    assert asyncio.run(runner.process(raw)).duplicate
    assert len(list(runner.store.list("jobs/job-1/duplicates/separator/"))) == 1


@pytest.mark.parametrize(
    ("raw", "code", "job_id"),
    [
        (b"\xff\xfe not json", "malformed_event", "unknown-" + _sha(b"\xff\xfe not json")),
        (
            json.dumps({"job_id": "j9", "schema_version": "3.1"}).encode(),
            "unsupported_schema_version",
            "j9",
        ),
        (json.dumps({"job_id": "j8", "keys": {}}).encode(), "malformed_event", "j8"),
    ],
)
def test_undecodable_events_fail_to_dlq(tmp_path: Path, raw: bytes, code: str, job_id: str) -> None:
    runner, emitter = _runner(tmp_path, _separated)
    outcome = asyncio.run(runner.process(raw))
    assert outcome.status == "failed"
    assert emitter.topics() == ["song.uploaded.dlq", "track.failed"]
    _, _, value, headers = emitter.sent[0]
    assert value == raw and headers and headers["singtome-error-code"] == code.encode()
    failed = TrackFailed.model_validate_json(emitter.last("track.failed"))
    assert (failed.code, failed.job_id, failed.stage, failed.retriable) == (
        code,
        job_id,
        "separator",
        False,
    )


def test_oversized_event(tmp_path: Path) -> None:
    runner, _ = _runner(tmp_path, _separated, broker={"max_event_bytes": 1024})
    event = _event(runner.store)  # type: ignore[arg-type]
    event.options.output.title = "x" * 2000
    outcome = asyncio.run(runner.process(encode(event)))
    assert outcome.failure and outcome.failure.code == "event_too_large"
    assert outcome.failure.job_id == "job-1"


def test_stage_errors_and_crashes_become_track_failed(tmp_path: Path) -> None:
    def bad_input(event: Event, ctx: StageContext) -> Event:
        raise StageError("not_audio", "song.wav is not audio")

    def bug(event: Event, ctx: StageContext) -> Event:
        raise ZeroDivisionError("oops")

    for handler, code in (
        (bad_input, "not_audio"),
        (bug, "internal_error"),
        (_separated, "missing_object"),
    ):
        runner, emitter = _runner(tmp_path, handler)
        event = SongUploaded(
            job_id="job-2",
            keys=ObjectKeys(song="uploads/job-2/none.wav"),
            options=JobOptions(voice=VoiceOptions(dataset_key="uploads/job-2/voice/")),
        )
        outcome = asyncio.run(runner.process(encode(event)))
        assert outcome.failure and outcome.failure.code == code
        assert outcome.failure.source_event_id == event.event_id
        assert emitter.topics() == ["song.uploaded.dlq", "track.failed"]
    assert StageError("not_audio", "x").retriable is False
    with pytest.raises(ValueError, match="unknown error code"):
        StageError("no_such_code", "x")


def test_transient_errors_are_retried_then_succeed(tmp_path: Path) -> None:
    calls = []

    def flaky(event: Event, ctx: StageContext) -> Event:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStoreError("S3 503")
        return _separated(event, ctx)

    runner, emitter = _runner(tmp_path, flaky, runtime={"transient_retries": 5})
    outcome = asyncio.run(runner.process(encode(_event(runner.store))))  # type: ignore[arg-type]
    assert outcome.status == "done" and len(calls) == 3
    assert emitter.topics() == ["vocals.separated"]


def test_transient_errors_past_the_bound_fail_retriable(tmp_path: Path) -> None:
    calls = []

    def down(event: Event, ctx: StageContext) -> Event:
        calls.append(1)
        raise TransientError("store_unavailable", "S3 is down")

    runner, _ = _runner(tmp_path, down, runtime={"transient_retries": 2})
    outcome = asyncio.run(runner.process(encode(_event(runner.store))))  # type: ignore[arg-type]
    assert outcome.failure and outcome.failure.retriable
    assert outcome.failure.code == "store_unavailable" and outcome.failure.attempt == 3
    assert len(calls) == 3


def test_stage_timeout_fails_retriable(tmp_path: Path) -> None:
    import time

    def slow(event: Event, ctx: StageContext) -> Event:
        time.sleep(1.0)
        return _separated(event, ctx)

    runner, _ = _runner(tmp_path, slow, runtime={"stage_timeout_s": 0.2})
    outcome = asyncio.run(runner.process(encode(_event(runner.store))))  # type: ignore[arg-type]
    assert outcome.failure and outcome.failure.code == "timeout" and outcome.failure.retriable


def test_a_tombstone_is_answered_and_kept_as_a_tombstone(tmp_path: Path) -> None:
    runner, emitter = _runner(tmp_path, _separated)
    outcome = asyncio.run(runner.process(None, b"job-t"))
    assert outcome.failure and outcome.failure.code == "malformed_event"
    assert "tombstone" in outcome.failure.message and outcome.job_id == "job-t"
    assert emitter.topics() == ["song.uploaded.dlq", "track.failed"]
    assert emitter.sent[0][2] is None, "the DLQ copy is the original: a null value"


@pytest.mark.parametrize(
    ("job_id", "key"),
    [("jöb-ü-🎵", None), (".", None), ("..", None), ("x" * 2000, None), (None, b"\xff\xfe")],
)
def test_an_unusable_job_id_is_answered_under_a_derived_one(
    tmp_path: Path, job_id: str | None, key: bytes | None
) -> None:
    runner, emitter = _runner(tmp_path, _separated)
    body: dict[str, object] = {"keys": {"song": "uploads/x/song.wav"}}
    if job_id is not None:
        body["job_id"] = job_id
    raw = json.dumps(body).encode()
    first = asyncio.run(runner.process(raw, key))
    again = asyncio.run(runner.process(raw, key))
    source = job_id.encode() if job_id is not None else key or b""
    expected = "invalid-" + _sha(source)
    assert first.failure and first.failure.code == "malformed_event"
    assert first.job_id == again.job_id == expected, "derived, the same every time"
    assert first.failure.event_id == again.failure.event_id  # type: ignore[union-attr]
    assert [v for t, _, v, _ in emitter.sent if t == "song.uploaded.dlq"] == [raw, raw]
    assert runner.store.exists(f"jobs/{expected}/track.failed.json")


def test_forbidden_keys_are_refused_before_the_stage_or_s3(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(event: Event, ctx: StageContext) -> Event:
        calls.append(event.job_id)
        return _separated(event, ctx)

    runner, _ = _runner(tmp_path, handler)
    runner.store.put_bytes("uploads/other/song.wav", b"someone else's song")
    for key in ("uploads/other/song.wav", "uploads/", "../x", "s3://b/x", "/abs"):
        event = SongUploaded(
            job_id="job-f", keys=ObjectKeys(song=key), options=voice_options("job-f")
        )
        outcome = asyncio.run(runner.process(encode(event)))
        assert outcome.failure and outcome.failure.code == "forbidden_key", key
        assert not outcome.failure.retriable and "keys.song" in outcome.failure.message
    assert calls == []
    assert not list(runner.store.list("jobs/job-f/seen/")), "refused before any bookkeeping"


def test_a_key_read_by_the_stage_is_held_to_the_policy_too(tmp_path: Path) -> None:
    def sneaky(event: Event, ctx: StageContext) -> Event:
        ctx.store.get_bytes("uploads/other/song.wav")  # a key the event never named
        return _separated(event, ctx)

    runner, _ = _runner(tmp_path, sneaky)
    runner.store.put_bytes("uploads/other/song.wav", b"someone else's song")
    outcome = asyncio.run(runner.process(encode(_event(runner.store))))  # type: ignore[arg-type]
    assert outcome.failure and outcome.failure.code == "forbidden_key"


def test_a_key_s3_refuses_is_invalid_key_and_bookkeeping_errors_never_escape(
    tmp_path: Path,
) -> None:
    from streams.store import InvalidKey, StoreError

    runner, emitter = _runner(tmp_path, _separated)
    real = runner.store

    class Refusing:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def get_bytes(self, key: str) -> bytes:
            raise InvalidKey(key, "KeyTooLongError")

        def put_if_absent(self, key: str, data: bytes) -> bool:
            raise StoreError("S3 400 on the duplicate marker")

    runner.store = Refusing()  # type: ignore[assignment]
    outcome = asyncio.run(runner.process(encode(_event(real))))  # type: ignore[arg-type]
    assert outcome.failure and outcome.failure.code == "invalid_key"
    assert emitter.topics() == ["song.uploaded.dlq", "track.failed"]


def test_an_answer_for_another_job_is_a_bug_not_a_send(tmp_path: Path) -> None:
    def wrong(event: Event, ctx: StageContext) -> Event:
        out = _separated(event, ctx)
        out.job_id = "someone-else"
        return out

    runner, emitter = _runner(tmp_path, wrong)
    outcome = asyncio.run(runner.process(encode(_event(runner.store))))  # type: ignore[arg-type]
    assert outcome.failure and outcome.failure.code == "internal_error"
    assert emitter.topics() == ["song.uploaded.dlq", "track.failed"]
    assert all(key == "job-1" for _, key, _, _ in emitter.sent)


def test_a_replayed_input_is_a_duplicate_at_every_stage(tmp_path: Path) -> None:
    from tests import stages as test_stages

    store = LocalStore(tmp_path / "store")
    emitter = ListEmitter()
    runners = [
        Runner(
            stage=stage,
            handler=getattr(test_stages, name),
            settings=Settings(),
            store=store,
            emitter=emitter,
        )
        for name, stage in STAGES.items()
    ]
    raw = encode(_event(store, "job-r"))
    for delivery in range(2):  # the input and its replay flow through all four stages
        message = raw
        for runner in runners:
            outcome = asyncio.run(runner.process(message))
            assert outcome.status == "done" and outcome.output
            assert outcome.duplicate is (delivery == 1), (runner.stage.stage, delivery)
            message = encode(outcome.output)
    for name in STAGES:
        assert len(list(store.list(f"jobs/job-r/duplicates/{name}/"))) == 1, name
    ready = [v for t, _, v, _ in emitter.sent if t == "track.ready"]
    assert len(ready) == 2 and json.loads(ready[0])["event_id"] == json.loads(ready[1])["event_id"]


def test_retriability_is_the_codes_alone() -> None:
    from foundation.errors import ERROR_CODES, RETRIABLE_CODES, is_retriable

    for code in ERROR_CODES:
        assert StageError(code, "x").retriable is (code in RETRIABLE_CODES) is is_retriable(code)
    assert TransientError("timeout", "x").retriable
    with pytest.raises(ValueError, match="not retriable"):
        TransientError("not_audio", "x")
