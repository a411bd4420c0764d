from __future__ import annotations

import json

import pytest

from schemas.events import (
    BY_TOPIC,
    EventDecodeError,
    JobOptions,
    JobProgress,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    VocalsSeparated,
    VoiceOptions,
    decode,
    encode,
    follow_event_id,
    is_valid_id,
)
from schemas.export import asyncapi_document, export

VOICE = VoiceOptions(dataset_key="uploads/job-1/voice/")


def _song(**overrides: object) -> dict[str, object]:
    event = SongUploaded(
        job_id="job-1",
        keys=ObjectKeys(song="uploads/job-1/song.wav"),
        options=JobOptions(voice=VOICE),
    )
    return {**json.loads(encode(event)), **overrides}


def test_round_trip_keeps_every_field() -> None:
    event = SongUploaded(
        job_id="job-1",
        keys=ObjectKeys(song="uploads/job-1/song.wav"),
        options=JobOptions(voice=VOICE),
    )
    event.options.conversion.f0_up_key = 3
    again = decode(SongUploaded, encode(event))
    assert again == event
    assert again.options.conversion.f0_up_key == 3


def test_follow_carries_envelope_with_a_new_id() -> None:
    event = SongUploaded(
        job_id="job-1", keys=ObjectKeys(song="s.wav"), options=JobOptions(voice=VOICE)
    )
    nxt = event.follow(
        VocalsSeparated,
        keys=event.keys.model_copy(update={"vocals": "v.flac", "accompaniment": "a.flac"}),
        sample_rate=44100,
        duration_s=2.0,
        separator_model="spleeter",
    )
    assert nxt.job_id == event.job_id and nxt.options == event.options
    assert nxt.keys.song == "s.wav" and nxt.keys.vocals == "v.flac"
    assert nxt.event_id != event.event_id
    assert nxt.occurred_at >= event.occurred_at


def test_follow_ids_are_derived_from_the_input_id_and_stage() -> None:
    event = SongUploaded(
        job_id="job-1",
        event_id="in-1",
        keys=ObjectKeys(song="s.wav", vocals="v.flac", accompaniment="a.flac"),
        options=JobOptions(voice=VOICE),
    )
    again = event.model_copy(update={"occurred_at": event.occurred_at.replace(year=2030)})
    fields = {"sample_rate": 44100, "duration_s": 2.0, "separator_model": "spleeter"}
    first, second = event.follow(VocalsSeparated, **fields), again.follow(VocalsSeparated, **fields)
    assert first.event_id == second.event_id, "the same input is answered under the same id"
    assert first.event_id == follow_event_id("in-1", "vocals.separated")
    other = event.model_copy(update={"event_id": "in-2"}).follow(VocalsSeparated, **fields)
    assert other.event_id != first.event_id
    failed = {"message": "m", "retriable": False, "source_topic": "song.uploaded"}
    by_stage = {
        (stage, code): event.follow(TrackFailed, stage=stage, code=code, **failed).event_id
        for stage in ("separator", "trainer")
        for code in ("not_audio", "timeout")
    }
    assert len(set(by_stage.values())) == 4, "stage and code each change the id"
    assert all(is_valid_id(v) for v in by_stage.values())
    progress = [event.follow(JobProgress, stage="separator", fraction=0.5) for _ in range(2)]
    assert progress[0].event_id != progress[1].event_id, "progress reports repeat: random ids"


@pytest.mark.parametrize(
    "value",
    ["", ".", "..", ".hidden", "a/b", "a\\b", "jöb-ü-🎵", "x" * 129, "a b", "a\n", "\u0000"],
)
def test_ids_outside_the_one_pattern_are_refused(value: str) -> None:
    assert not is_valid_id(value)
    for field in ("job_id", "event_id"):
        with pytest.raises(EventDecodeError) as caught:
            decode(SongUploaded, json.dumps(_song(**{field: value})))
        assert caught.value.code == "malformed_event" and field in caught.value.message


@pytest.mark.parametrize("value", ["a", "job-1", "A.b_c-9", "x" * 128, "0" * 32])
def test_ids_in_the_pattern_are_accepted(value: str) -> None:
    assert is_valid_id(value)
    event = decode(SongUploaded, json.dumps(_song(job_id=value, event_id=value)))
    assert event.job_id == event.event_id == value


@pytest.mark.parametrize(
    ("payload", "code", "names"),
    [
        (b"{not json", "malformed_event", "not JSON"),
        (b"[1, 2]", "malformed_event", "JSON object"),
        (json.dumps(_song(schema_version="2.0")).encode(), "unsupported_schema_version", "2.0"),
        (json.dumps(_song(job_id="")).encode(), "malformed_event", "job_id"),
        (json.dumps(_song(keys={})).encode(), "malformed_event", "keys"),
        (
            json.dumps(_song(options={"conversion": {"index_rate": 3}})).encode(),
            "malformed_event",
            "options.conversion.index_rate",
        ),
        (json.dumps(_song(occurred_at="yesterday")).encode(), "malformed_event", "occurred_at"),
    ],
)
def test_bad_payloads_name_the_problem(payload: bytes, code: str, names: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode(SongUploaded, payload)
    assert caught.value.code == code
    assert names in caught.value.message


def test_minor_versions_and_unknown_fields_are_accepted() -> None:
    event = decode(SongUploaded, json.dumps(_song(schema_version="1.7", new_field=1)))
    assert event.schema_version == "1.7"


def test_decode_error_keeps_job_id_when_readable() -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode(SongUploaded, json.dumps(_song(schema_version="9.0")))
    assert caught.value.job_id == "job-1"


def test_export_writes_a_schema_per_topic_and_asyncapi(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import jsonschema

    written = {p.name for p in export(tmp_path)}
    assert written == {f"{t}.schema.json" for t in BY_TOPIC} | {"asyncapi.json"}
    schema = json.loads((tmp_path / "track.failed.schema.json").read_text())
    failed = TrackFailed(
        job_id="j",
        stage="mixer",
        code="stem_mismatch",
        message="m",
        retriable=False,
        source_topic="vocals.converted",
    )
    jsonschema.validate(json.loads(encode(failed)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"job_id": "j"}, schema)
    doc = asyncapi_document()
    assert set(BY_TOPIC) <= set(doc["channels"])
    assert "song.uploaded.dlq" in doc["channels"]
    assert doc["components"]["messages"]["SongUploaded"]["bindings"]["kafka"]["key"]


def _raw(**overrides: object) -> bytes:
    return json.dumps(_song(**overrides)).encode()


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        (None, "tombstone"),
        (b"", "not JSON"),
        (b"\xef\xbb\xbf" + _raw(), "byte-order mark"),
        (_raw().decode().encode("utf-16"), "byte-order mark"),
        (_raw().replace(b"job-1", b"job-\xff"), "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32"),
        (b'{"a":' * 40_000 + b"1" + b"}" * 40_000, "nested deeper than 32"),
        (_raw(x=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]), "nested"),
        (_raw(x=0).replace(b'"x": 0', b'"x": ' + b"9" * 5000), "a number of 5000 characters"),
        (_raw(x=0).replace(b'"x": 0', b'"x": 1e999'), "out of range"),
        (_raw(x=float("nan")), "NaN is not JSON"),
        (_raw(x=float("-inf")), "-Infinity is not JSON"),
        (_raw()[:-1] + b', "job_id": "job-2"}', "'job_id' appears twice"),
        (_raw(x="\ud800"), "unpaired UTF-16 surrogate escape (at x)"),
        (_raw(x={"y": "a\x00b"}), "NUL character (at x.y)"),
        (_raw(x="a" * 20_000), "a string of 20000 characters"),
        (_raw(schema_version="1" * 5000 + ".0"), "schema_version"),
        (_raw(occurred_at="2024-01-01T00:00:00"), "occurred_at: Input should have timezone"),
        (_raw(history=[1] * 500), "and 492 more"),
    ],
)
def test_hostile_payloads_are_refused_with_a_reason(payload: bytes | None, names: str) -> None:
    with pytest.raises(EventDecodeError) as caught:
        decode(SongUploaded, payload)
    assert caught.value.code == "malformed_event"
    assert names in caught.value.message
    assert len(caught.value.message) < 2000


def test_the_depth_check_costs_linear_time() -> None:
    """Texts built to make a regex backtrack (quotes and escapes without end) are measured fast."""
    import time

    for text in ['"\\"' * 80_000, '["' + '\\"' * 120_000, "[]," * 80_000, "[" * 200_000]:
        started = time.perf_counter()
        with pytest.raises(EventDecodeError):
            decode(SongUploaded, text)
        assert time.perf_counter() - started < 5.0  # quadratic would take minutes


def test_peek_job_id_reads_within_the_same_limits() -> None:
    from schemas.events import peek_job_id

    assert peek_job_id(_raw()) == "job-1"
    assert peek_job_id(b"[" * 100_000) is None
    assert peek_job_id(None) is None
    assert peek_job_id(b'{"job_id": 5}') is None


def test_the_export_documents_the_key_policy_and_marks_key_fields() -> None:
    from schemas.events import KEY_POLICY_DOC, S3_KEY_MARK
    from schemas.export import json_schemas

    assert "forbidden_key" in KEY_POLICY_DOC and "uploads/<job_id>/" in KEY_POLICY_DOC
    assert KEY_POLICY_DOC in asyncapi_document()["info"]["description"]
    schema = json_schemas()["song.uploaded"]
    keys = schema["$defs"]["ObjectKeys"]
    assert keys["description"] == KEY_POLICY_DOC
    assert all(field.get(S3_KEY_MARK) for field in keys["properties"].values())
    voice = schema["$defs"]["VoiceOptions"]["properties"]
    assert [n for n, f in voice.items() if f.get(S3_KEY_MARK)] == [
        "dataset_key",
        "model_key",
        "index_key",
    ]
    assert schema["properties"]["job_id"]["pattern"] == schema["properties"]["event_id"]["pattern"]
