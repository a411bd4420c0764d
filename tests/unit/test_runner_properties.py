"""Property-based tests of the runner: whatever bytes arrive, one answer, never an exception.

The runner runs in-process with a list emitter, a folder store and the copy-and-tag test stages
(tests/stages.py), for each of the four stage topics. Hypothesis feeds it arbitrary bytes,
arbitrary JSON shapes and valid events with one thing changed; every message must end in exactly
one answer: the stage's output event, or ``track.failed`` plus the original in ``<topic>.dlq``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation.errors import ERROR_CODES
from schemas.events import (
    BY_TOPIC,
    JobOptions,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    VocalsConverted,
    VocalsSeparated,
    VoiceOptions,
    VoiceTrained,
    decode,
    encode,
    is_valid_id,
)
from streams.runner import Runner, _safe_job_id
from streams.settings import Settings
from streams.store import LocalStore
from streams.topics import JOB_PROGRESS, STAGES, TRACK_FAILED, dlq
from tests import stages as test_stages

JOB = "prop-job"
DIGEST = "cd" * 32
RUNS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ListEmitter:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes | None, dict[str, bytes] | None]] = []

    async def send(
        self, topic: str, key: str, value: bytes | None, headers: dict[str, bytes] | None = None
    ) -> None:
        self.sent.append((topic, key, value, headers))


def _base_events() -> dict[str, dict[str, Any]]:
    """A valid event for each stage topic, naming objects that exist in the store."""
    keys = ObjectKeys(
        song=f"uploads/{JOB}/song.wav",
        vocals=f"stems/{DIGEST}/vocals.flac",
        accompaniment=f"stems/{DIGEST}/accompaniment.flac",
        voice_model=f"voices/{DIGEST}/model.pth",
        converted_vocals=f"converted/{DIGEST}/vocals.flac",
    )
    options = JobOptions(voice=VoiceOptions(dataset_key=f"uploads/{JOB}/voice/"))
    events = [
        SongUploaded(job_id=JOB, keys=keys, options=options),
        VocalsSeparated(
            job_id=JOB,
            keys=keys,
            options=options,
            sample_rate=44100,
            duration_s=1.0,
            separator_model="x",
        ),
        VoiceTrained(job_id=JOB, keys=keys, options=options, voice_kind="world"),
        VocalsConverted(
            job_id=JOB,
            keys=keys,
            options=options,
            backend="world",
            sample_rate=44100,
            duration_s=1.0,
        ),
    ]
    return {e.topic: json.loads(encode(e)) for e in events}


BASE = _base_events()


class Harness:
    """One runner per stage on one store; counts what each message was answered with."""

    def __init__(self, root: Path) -> None:
        self.store = LocalStore(root)
        for key in (
            f"uploads/{JOB}/song.wav",
            f"stems/{DIGEST}/vocals.flac",
            f"stems/{DIGEST}/accompaniment.flac",
            f"voices/{DIGEST}/model.pth",
            f"converted/{DIGEST}/vocals.flac",
        ):
            self.store.put_bytes(key, b"bytes of " + key.encode())
        self.emitter = ListEmitter()

        async def no_sleep(_: float) -> None:
            return None

        self.runners = {
            stage.consumes: Runner(
                stage=stage,
                handler=getattr(test_stages, name),
                settings=Settings(
                    broker={"max_event_bytes": 64 * 1024}, runtime={"transient_retries": 0}
                ),
                store=self.store,
                emitter=self.emitter,
                sleep=no_sleep,
            )
            for name, stage in STAGES.items()
        }

    def answer(self, topic: str, raw: bytes | None, key: bytes | None) -> None:
        """Process one message and check it got exactly one answer."""
        runner = self.runners[topic]
        self.emitter.sent.clear()
        outcome = asyncio.run(runner.process(raw, key))  # must not raise
        sent = [s for s in self.emitter.sent if s[0] != JOB_PROGRESS]
        topics = [t for t, *_ in sent]
        if outcome.status == "done":
            assert topics == [runner.stage.produces], topics
            output = BY_TOPIC[runner.stage.produces].model_validate_json(sent[0][2] or b"")
            assert output.job_id == outcome.job_id == decode(runner.input_type, raw).job_id
            assert sent[0][1] == output.job_id
            return
        assert outcome.status == "failed"
        assert topics == [dlq(topic), TRACK_FAILED], topics
        (_, dlq_key, dlq_value, headers), (_, failed_key, failed_value, _) = sent
        assert dlq_value == raw, "the original, unchanged, in the DLQ"
        failure = TrackFailed.model_validate_json(failed_value or b"")
        assert failure.code in ERROR_CODES and failure.message
        # The test stages have no bugs: internal_error would be the runner's own failure.
        assert failure.code != "internal_error", failure.message
        assert failure.stage == runner.stage.stage and failure.source_topic == topic
        assert is_valid_id(failure.job_id) and is_valid_id(failure.event_id)
        assert dlq_key == failed_key == failure.job_id == outcome.job_id
        assert headers and headers["singtome-error-code"] == failure.code.encode()
        assert len(failed_value or b"") < 16 * 1024, "an answer stays small"


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    root = Path(tempfile.mkdtemp(prefix="singtome-prop-"))
    try:
        yield Harness(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


topics = st.sampled_from(sorted(BASE))
kafka_keys = st.none() | st.binary(max_size=300) | st.sampled_from([JOB.encode(), b"..", b""])
# Strings a hostile producer would try, beside arbitrary text.
nasty_strings = st.sampled_from(
    [
        "", ".", "..", "../x", "/abs", "s3://other/x", "uploads/", "uploads/other/song.wav",
        f"uploads/{JOB}/../other/x", "jöb-ü-🎵", "\ud800", "a\x00b", "x" * 2000, "9" * 5000,
        "1.0", "2.0", "99999999999999999999.0", "\ufeff", "a\\b", "stems/x/v.flac",
    ]
)  # fmt: skip
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**70, max_value=10**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | nasty_strings
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | nasty_strings, children, max_size=4)
    ),
    max_leaves=20,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@RUNS
@given(topic=topics, raw=st.binary(max_size=3000) | st.none(), key=kafka_keys)
def test_arbitrary_bytes_get_exactly_one_answer(
    harness: Harness, topic: str, raw: bytes | None, key: bytes | None
) -> None:
    harness.answer(topic, raw, key)


@RUNS
@given(topic=topics, value=json_values, key=kafka_keys)
def test_arbitrary_json_gets_exactly_one_answer(
    harness: Harness, topic: str, value: Any, key: bytes | None
) -> None:
    harness.answer(topic, _dumps(value), key)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for name, item in value.items():
            found += _paths(item, (*prefix, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid event of a stage topic with one field set, removed, or nested, or its bytes cut."""
    topic = draw(topics)
    event = copy.deepcopy(BASE[topic])
    event["event_id"] = draw(st.text("abcdef0123456789", min_size=8, max_size=32))
    path = draw(st.sampled_from(_paths(event)))
    parent: Any = event
    for step in path[:-1]:
        parent = parent[step]
    change = draw(st.sampled_from(["set", "delete", "deep", "digits", "bytes", "none"]))
    marker = "\x01marker\x01"
    if change == "set":
        parent[path[-1]] = draw(json_values)
    elif change == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif change in ("deep", "digits"):
        parent[path[-1]] = marker
    raw = _dumps(event)
    if change == "deep":  # nesting json would recurse into without end
        depth = draw(st.sampled_from([33, 2_000, 30_000]))
        raw = raw.replace(_dumps(marker), b"[" * depth + b"1" + b"]" * depth)
    elif change == "digits":  # an integer Python refuses to build (over 4300 digits)
        digits = draw(st.sampled_from([65, 4_301, 20_000]))
        raw = raw.replace(_dumps(marker), b"7" * digits)
    elif change == "bytes":
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8)) + raw[cut + draw(st.integers(0, 8)) :]
    return topic, raw


@RUNS
@given(message=mutated_events(), key=kafka_keys)
def test_mutated_valid_events_get_exactly_one_answer(
    harness: Harness, message: tuple[str, bytes], key: bytes | None
) -> None:
    topic, raw = message
    harness.answer(topic, raw, key)


def test_the_unmutated_events_are_answered_with_outputs(harness: Harness) -> None:
    """The base of the mutations is good: each stage answers it with its output event."""
    for topic, event in BASE.items():
        harness.emitter.sent.clear()
        outcome = asyncio.run(harness.runners[topic].process(_dumps(event), JOB.encode()))
        assert outcome.status == "done", outcome.failure
        harness.answer(topic, _dumps(event), JOB.encode())


@settings(max_examples=300, deadline=None, database=None)
@given(
    candidate=st.none() | st.text(max_size=300) | nasty_strings,
    key=kafka_keys,
    raw=st.none() | st.binary(max_size=64),
)
def test_the_safe_job_id_always_matches_the_pattern(
    candidate: str | None, key: bytes | None, raw: bytes | None
) -> None:
    safe = _safe_job_id(candidate, key, raw)
    assert is_valid_id(safe)
    assert safe == _safe_job_id(candidate, key, raw), "deterministic"
    if is_valid_id(candidate):
        assert safe == candidate
