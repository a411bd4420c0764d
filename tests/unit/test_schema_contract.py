"""The exported JSON Schema is the contract: the service reads an event exactly when the schema
accepts it. Events are generated from the exported schemas themselves (a small generator below,
for the subset of JSON Schema the export uses), then mutated at random paths; for every one,
jsonschema's verdict and the service's (``decode``, which includes each stage's declared
requirements) must be the same."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.events import BY_TOPIC, EventDecodeError, decode
from schemas.export import contract_violations, json_schemas
from streams.topics import PIPELINE_TOPICS, STAGES

SCHEMAS = json_schemas()
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    # No shrinking: on two shared cores it can take minutes; the failure message prints the event.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **target}
    return schema


def _merge(a: dict[str, Any], b: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Both constraints at once (enough for the export's allOf/anyOf: nested objects)."""
    a, b = _resolve(a, root), _resolve(b, root)
    merged = {**a, **b}
    if "properties" in a and "properties" in b:
        merged["properties"] = dict(a["properties"])
        for name, sub in b["properties"].items():
            mine = a["properties"].get(name)
            merged["properties"][name] = _merge(mine, sub, root) if mine else sub
    if "required" in a and "required" in b:
        merged["required"] = sorted({*a["required"], *b["required"]})
    if "anyOf" in a and "anyOf" in b:  # keep both choices: one from each
        merged["allOf"] = [*merged.get("allOf", []), {"anyOf": a["anyOf"]}]
    return merged


def events_of(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Instances of ``schema`` (a strategy); anything it cannot aim at exactly is filtered by
    the validator at the top."""
    schema = _resolve(schema, root)
    if "allOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            merged = _merge(merged, part, root)
        return events_of(merged, root)
    if "anyOf" in schema:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return st.one_of(
            [events_of(_merge(rest, branch, root), root) for branch in schema["anyOf"]]
        )
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
        low, high = schema.get("minLength", 0), schema.get("maxLength", 24)
        text = (
            st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.text()
        )
        return text.filter(lambda t: low <= len(t) <= high)
    if kind == "integer":
        return st.integers(schema.get("minimum", -(10**9)), schema.get("maximum", 10**9))
    if kind == "number":
        return st.floats(
            schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(events_of(schema.get("items", {}), root), max_size=3)
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties")
        return st.fixed_dictionaries(
            {name: events_of(sub, root) for name, sub in properties.items() if name in required},
            optional={
                name: events_of(sub, root)
                for name, sub in properties.items()
                if name not in required
            },
        ).flatmap(
            lambda fixed: (
                st.dictionaries(st.text(max_size=8), events_of(extra, root), max_size=2).map(
                    lambda more: {**more, **fixed}
                )
                if isinstance(extra, dict)
                else st.just(fixed)
            )
        )
    return json_values


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    checker = Draft202012Validator.FORMAT_CHECKER
    return events_of(schema, schema).filter(
        Draft202012Validator(schema, format_checker=checker).is_valid
    )


def _service_accepts(topic: str, event: Any) -> bool:
    try:
        decode(BY_TOPIC[topic], json.dumps(event))
    except EventDecodeError:
        return False
    return True


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutated(event: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    copy = json.loads(json.dumps(event))
    parent = copy
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copy


def test_the_stage_topics_state_what_their_stage_requires() -> None:
    song = SCHEMAS["song.uploaded"]
    assert {"job_id", "keys", "options"} <= set(song["required"])
    assert contract_violations("song.uploaded", {"job_id": "j", "keys": {}, "options": {}})
    for topic in (s.consumes for s in STAGES.values()):
        cls = BY_TOPIC[topic]
        if cls.required_keys:  # type: ignore[attr-defined]
            assert "keys" in SCHEMAS[topic]["required"], topic


@pytest.mark.parametrize("topic", PIPELINE_TOPICS)
def test_every_event_the_schema_accepts_is_read(topic: str) -> None:
    @PROPERTY
    @given(from_schema(SCHEMAS[topic]))
    def check(event: Any) -> None:
        assert contract_violations(topic, event) == []
        assert _service_accepts(topic, event), f"valid by the schema, refused: {event}"

    check()


@pytest.mark.parametrize("topic", PIPELINE_TOPICS)
def test_service_and_schema_agree_on_mutated_events(topic: str) -> None:
    @PROPERTY
    @given(from_schema(SCHEMAS[topic]), st.data())
    def check(event: Any, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(_paths(event)))
        delete = data.draw(st.booleans())
        value = data.draw(json_values)
        changed = _mutated(event, path, value, delete)
        valid = not contract_violations(topic, changed)
        assert _service_accepts(topic, changed) == valid, (
            f"schema says {'valid' if valid else 'invalid'}, the service disagrees: {changed}"
        )

    check()


def test_a_song_uploaded_without_a_song_or_a_voice_is_refused_by_both() -> None:
    base = {"job_id": "job-1", "keys": {"song": "uploads/job-1/song.wav"}}
    voice = {"voice": {"dataset_key": "uploads/job-1/voice/"}}
    assert _service_accepts("song.uploaded", {**base, "options": voice})
    for event in (
        base,  # no voice
        {**base, "options": {"voice": {"dataset_key": ""}}},
        {"job_id": "job-1", "options": voice},  # no keys
        {"job_id": "job-1", "keys": {"song": ""}, "options": voice},
        {"job_id": "job-1", "keys": {"song": None}, "options": voice},
    ):
        assert contract_violations("song.uploaded", event), event
        assert not _service_accepts("song.uploaded", event), event


def test_the_decoding_limits_are_stated_in_the_schema_and_refused_by_both() -> None:
    from schemas.events import DECODE_LIMITS
    from schemas.export import LIMITS_MARK

    base = {
        "job_id": "job-1",
        "keys": {"song": "uploads/job-1/song.wav"},
        "options": {"voice": {"dataset_key": "uploads/job-1/voice/"}},
    }
    assert _service_accepts("song.uploaded", base)
    assert not contract_violations("song.uploaded", base)
    long_title = "x" * (DECODE_LIMITS.max_string_chars + 1)
    digits = DECODE_LIMITS.max_number_chars
    for event in (
        {**base, "options": {**base["options"], "output": {"title": "a\0b"}}},
        {**base, "options": {**base["options"], "output": {"title": long_title}}},
        {**base, "history": [], "schema_version": "1.٣"},  # an Arabic-Indic digit
        {**base, "options": {**base["options"], "output": {"bitrate": "١٩٢k"}}},
        {**base, "keys": {"song": "uploads/job-1/song.wav", "a\0": None}},
    ):
        assert contract_violations("song.uploaded", event), event
        assert not _service_accepts("song.uploaded", event), event
    failed = {
        "job_id": "job-1",
        "stage": "mixer",
        "code": "timeout",
        "message": "m",
        "retriable": True,
        "source_topic": "vocals.converted",
    }
    widest, too_wide, too_low = 10**digits - 1, 10**digits, -(10 ** (digits - 1))
    for attempt, ok in ((widest, True), (too_wide, False), (too_low, False)):
        event = {**failed, "attempt": attempt}
        assert (not contract_violations("track.failed", event)) is ok, attempt
        assert _service_accepts("track.failed", event) is ok, attempt
    stated = SCHEMAS["song.uploaded"][LIMITS_MARK]
    assert stated["max_depth"] == DECODE_LIMITS.max_depth
    assert stated["max_number_chars"] == digits
