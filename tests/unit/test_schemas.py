from __future__ import annotations

import json

import pytest

from schemas.events import (
    BY_TOPIC,
    EventDecodeError,
    JobOptions,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    VocalsSeparated,
    VoiceOptions,
    decode,
    encode,
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
