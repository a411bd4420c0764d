"""The flow, declared once: the pipeline's topics and which stage consumes and produces which.

It sits with the event models because it is part of the contract: a producer or consumer in any
language reads the same table from the exported AsyncAPI document. Every consumed topic has a
``<topic>.dlq`` twin. The runtime reads it through ``streams.topics``; the stage registry
(``agents/registry.py``) takes each stage's topics from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import (
    JobProgress,
    SongUploaded,
    TrackFailed,
    TrackReady,
    VocalsConverted,
    VocalsSeparated,
    VoiceTrained,
)

SONG_UPLOADED = SongUploaded.topic
VOCALS_SEPARATED = VocalsSeparated.topic
VOICE_TRAINED = VoiceTrained.topic
VOCALS_CONVERTED = VocalsConverted.topic
TRACK_READY = TrackReady.topic
TRACK_FAILED = TrackFailed.topic
JOB_PROGRESS = JobProgress.topic

DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class StageTopics:
    stage: str
    consumes: str
    produces: str


# The flow: which stage reads which topic and writes which, in pipeline order.
STAGES: dict[str, StageTopics] = {
    "separator": StageTopics("separator", SONG_UPLOADED, VOCALS_SEPARATED),
    "trainer": StageTopics("trainer", VOCALS_SEPARATED, VOICE_TRAINED),
    "converter": StageTopics("converter", VOICE_TRAINED, VOCALS_CONVERTED),
    "mixer": StageTopics("mixer", VOCALS_CONVERTED, TRACK_READY),
}

PIPELINE_TOPICS = (
    SONG_UPLOADED,
    VOCALS_SEPARATED,
    VOICE_TRAINED,
    VOCALS_CONVERTED,
    TRACK_READY,
    TRACK_FAILED,
    JOB_PROGRESS,
)


def all_topics() -> list[str]:
    """Every topic the pipeline uses: the pipeline topics and the DLQ of each consumed topic."""
    return [*PIPELINE_TOPICS, *(dlq(s.consumes) for s in STAGES.values())]
