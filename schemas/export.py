"""JSON Schema per topic and one AsyncAPI 3.0 document, for producers and consumers in any
language."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from schemas.events import (
    DECODE_LIMITS,
    EVENT_TYPES,
    KEY_POLICY_DOC,
    SCHEMA_VERSION,
    SUPPORTED_VERSION_PATTERN,
)

# A string holding a NUL character (a regex escape every JSON Schema dialect reads the same way).
_HAS_NUL = {"pattern": "\\u0000"}
LIMITS_MARK = "x-singtome-decode-limits"


def _state_decode_limits(node: Any) -> None:
    """Write what ``decode`` refuses into the schema wherever JSON Schema can say it: every string
    and every field name bounded and free of NUL, every integer within what a number literal of
    ``max_number_chars`` characters can write. Nesting depth and the length of a float's literal
    cannot be said in JSON Schema: the top level names them under ``x-singtome-decode-limits``."""
    if isinstance(node, list):
        for item in node:
            _state_decode_limits(item)
        return
    if not isinstance(node, dict):
        return
    for value in node.values():
        _state_decode_limits(value)
    limit = DECODE_LIMITS.max_string_chars
    kind = node.get("type")
    if kind == "string":
        node["maxLength"] = min(node.get("maxLength", limit), limit)
        node.setdefault("not", _HAS_NUL)
    elif kind == "object":
        node.setdefault("propertyNames", {"maxLength": limit, "not": _HAS_NUL})
    elif kind == "integer":
        digits = DECODE_LIMITS.max_number_chars
        node.setdefault("minimum", -(10 ** (digits - 1) - 1))  # the sign is a character too
        node.setdefault("maximum", 10**digits - 1)


def json_schemas() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for cls in EVENT_TYPES:
        schema = cls.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://singtome.dev/schemas/{cls.topic}/{SCHEMA_VERSION}.json"
        schema["title"] = cls.topic
        # The service reads one major version: say so, not just "digits.digits".
        schema["properties"]["schema_version"]["pattern"] = SUPPORTED_VERSION_PATTERN
        _state_decode_limits(schema)
        schema[LIMITS_MARK] = {
            "max_depth": DECODE_LIMITS.max_depth,
            "max_number_chars": DECODE_LIMITS.max_number_chars,
            "max_string_chars": DECODE_LIMITS.max_string_chars,
            "description": "Also refused: objects and arrays nested deeper than max_depth, a "
            "number literal longer than max_number_chars characters, NaN/Infinity, a field "
            "name that appears twice in one object, a string with an unpaired surrogate escape, "
            "a byte-order mark or text that is not UTF-8.",
        }
        schemas[cls.topic] = schema
    return schemas


@cache
def _validator(topic: str) -> Any:
    from jsonschema import Draft202012Validator

    # Formats asserted, not only annotated: a date-time must be one (rfc3339-validator checks it).
    return Draft202012Validator(
        json_schemas()[topic], format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def contract_violations(topic: str, data: Any, limit: int = 3) -> list[str]:
    """Where ``data`` breaks the exported JSON Schema of ``topic`` (empty: it conforms)."""
    problems = []
    try:
        for error in _validator(topic).iter_errors(data):
            where = ".".join(str(part) for part in error.absolute_path) or "(event)"
            problems.append(f"{where}: {error.message[:200]}")
            if len(problems) >= limit:
                break
    except RecursionError:
        problems.append("(event): nested too deeply")
    except Exception as exc:  # a format checker's own error is the input's fault too
        problems.append(f"(event): {type(exc).__name__}")
    return problems


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    from schemas.flow import STAGES, dlq

    consumed_by = {s.consumes: s.stage for s in STAGES.values()}
    produced_by = {s.produces: s.stage for s in STAGES.values()}
    for cls in EVENT_TYPES:
        name = cls.__name__
        messages[name] = {
            "name": name,
            "title": cls.topic,
            "contentType": "application/json",
            "payload": {"$ref": f"./{cls.topic}.schema.json"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "The job id (ordering per job)."}
                }
            },
        }
        description = (cls.__doc__ or "").strip() or cls.topic
        channels[cls.topic] = {
            "address": cls.topic,
            "description": description,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        stage = produced_by.get(cls.topic)
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cls.topic}"},
            "summary": f"sent by the {stage} stage" if stage else "sent by every stage/backend",
        }
        if cls.topic in consumed_by:
            dlq_topic = dlq(cls.topic)
            channels[dlq_topic] = {
                "address": dlq_topic,
                "description": f"Originals of {cls.topic} messages that failed in the "
                f"{consumed_by[cls.topic]} stage, unchanged, with headers singtome-error-code, "
                "singtome-stage, singtome-retriable.",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "singtome events",
            "version": SCHEMA_VERSION,
            "description": "Kafka topics of the singtome song-cover pipeline. Events carry S3 "
            "object keys, never audio. Message key = job_id. Key policy: " + KEY_POLICY_DOC,
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, schema in json_schemas().items():
        path = directory / f"{topic}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = directory / "asyncapi.json"
    path.write_text(json.dumps(asyncapi_document(), indent=2) + "\n")
    written.append(path)
    return written
