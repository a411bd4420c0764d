"""The topics as the runtime names them. The flow table itself (topic names, which stage consumes
and produces which, the DLQ twins) is declared once, with the schemas, in ``schemas/flow.py``;
what is added here is the broker's side: the configured prefix."""

from __future__ import annotations

from schemas.flow import (
    DLQ_SUFFIX,
    JOB_PROGRESS,
    PIPELINE_TOPICS,
    SONG_UPLOADED,
    STAGES,
    TRACK_FAILED,
    TRACK_READY,
    VOCALS_CONVERTED,
    VOCALS_SEPARATED,
    VOICE_TRAINED,
    StageTopics,
    all_topics,
    dlq,
)

__all__ = [
    "DLQ_SUFFIX",
    "JOB_PROGRESS",
    "PIPELINE_TOPICS",
    "SONG_UPLOADED",
    "STAGES",
    "TRACK_FAILED",
    "TRACK_READY",
    "VOCALS_CONVERTED",
    "VOCALS_SEPARATED",
    "VOICE_TRAINED",
    "StageTopics",
    "all_topics",
    "dlq",
    "physical",
]


def physical(topic: str, prefix: str) -> str:
    """The name of a topic on the broker: the configured prefix + the plain name."""
    return prefix + topic
