"""The Python client for backend teams: publish events, submit a job, follow it, replay a topic.

Producers in other languages use the JSON Schema / AsyncAPI export (`singtome schemas export`);
the message key is always the job id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from schemas.events import (
    ID_PATTERN,
    Event,
    JobOptions,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    TrackReady,
    encode,
    is_valid_id,
)
from streams import keys as keylayout
from streams.admin import kafka_client_kwargs, producer_kwargs
from streams.settings import Settings
from streams.store import ObjectNotFound, ObjectStore, get_json
from streams.topics import TRACK_FAILED, TRACK_READY, physical

AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".wma", ".aiff"}


async def publish_async(settings: Settings, events: Iterable[Event]) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    count = 0
    try:
        for event in events:
            await producer.send_and_wait(
                physical(event.topic, settings.broker.topic_prefix),
                encode(event),
                key=event.job_id.encode(),
            )
            count += 1
    finally:
        await producer.stop()
    return count


def publish(settings: Settings, *events: Event) -> int:
    """Publish events to their topics (key = job id); returns how many were acknowledged."""
    return asyncio.run(publish_async(settings, events))


async def publish_raw_async(
    settings: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(
                physical(topic, settings.broker.topic_prefix), value, key=key
            )
    finally:
        await producer.stop()


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class VoiceSource(BaseModel):
    """A job's voice as local files: a folder of recordings to train on (``dataset``), or a ready
    model (``model``: an RVC ``.pth``, with its ``index`` if any, or a WORLD ``profile.npz``)."""

    model_config = ConfigDict(frozen=True)

    dataset: Path | None = None
    model: Path | None = None
    index: Path | None = None  # the model's; not uploaded without a model

    @model_validator(mode="after")
    def _one_voice(self) -> VoiceSource:
        if self.dataset is not None and self.model is not None:
            raise ValueError("a voice is a dataset folder or a model file, not both")
        return self

    @classmethod
    def from_path(cls, voice: Path, index: Path | None = None) -> VoiceSource:
        """The voice one path names (``singtome cover --voice``): a folder is a dataset, a file
        a model."""
        return cls(
            dataset=voice if voice.is_dir() else None,
            model=voice if voice.is_file() else None,
            index=index,
        )


def upload_voice_dataset(
    store: ObjectStore, job_id: str, folder: Path, upload_prefix: str = keylayout.UPLOAD_PREFIX
) -> str:
    """Upload the audio files of a folder under one prefix; returns the prefix."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"no audio files in {folder} (looked for {sorted(AUDIO_SUFFIXES)})")
    for path in files:
        key = keylayout.upload_dataset_key(
            job_id, path.relative_to(folder).as_posix(), upload_prefix
        )
        store.put_file(key, path)
    return keylayout.upload_dataset_prefix(job_id, upload_prefix)


def upload_job(
    store: ObjectStore,
    song: Path,
    *,
    voice: VoiceSource | None = None,
    options: JobOptions | None = None,
    job_id: str | None = None,
    upload_prefix: str = keylayout.UPLOAD_PREFIX,
) -> SongUploaded:
    """Upload the song and the voice (dataset folder or .pth/.index) under the job's upload
    prefix (``SINGTOME_UPLOAD_PREFIX``, the only place the key policy lets the job read its
    uploads from); returns the job's first event."""
    voice = voice or VoiceSource()
    job_id = job_id or new_job_id()
    if not is_valid_id(job_id):  # checked before its name becomes part of any key
        raise ValueError(f"job id {job_id!r} does not match {ID_PATTERN}")
    options = (options or JobOptions()).model_copy(deep=True)
    song_key = keylayout.upload_key(job_id, song.name, upload_prefix)
    store.put_file(song_key, song)
    if voice.dataset is not None:
        options.voice.dataset_key = upload_voice_dataset(
            store, job_id, voice.dataset, upload_prefix
        )
    if voice.model is not None:
        options.voice.model_key = keylayout.upload_model_key(
            job_id, voice.model.name, upload_prefix
        )
        store.put_file(options.voice.model_key, voice.model)
        if voice.index is not None:
            options.voice.index_key = keylayout.upload_model_key(
                job_id, voice.index.name, upload_prefix
            )
            store.put_file(options.voice.index_key, voice.index)
    return SongUploaded(job_id=job_id, options=options, keys=ObjectKeys(song=song_key))


def submit_job(settings: Settings, store: ObjectStore, song: Path, **upload: Any) -> SongUploaded:
    """:func:`upload_job`, then publish its ``song.uploaded``."""
    upload.setdefault("upload_prefix", settings.storage.upload_prefix)
    event = upload_job(store, song, **upload)
    publish(settings, event)
    return event


def job_state(store: ObjectStore, job_id: str) -> dict[str, dict[str, Any]]:
    """The last event of each topic for the job, as stored by the workers."""
    state: dict[str, dict[str, Any]] = {}
    prefix = keylayout.job_prefix(job_id)
    for key in store.list(prefix):
        name = key[len(prefix) :]
        if "/" in name or not name.endswith(".json"):
            continue
        try:
            state[name[: -len(".json")]] = get_json(store, key)
        except ObjectNotFound:
            continue
    return state


def wait_for_job(
    store: ObjectStore,
    job_id: str,
    timeout_s: float,
    on_state: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    poll_s: float = 0.5,
) -> TrackReady | TrackFailed:
    """Poll the job state until ``track.ready`` or ``track.failed``; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = job_state(store, job_id)
        if on_state:
            on_state(state)
        if TRACK_READY in state:
            return TrackReady.model_validate(state[TRACK_READY])
        if TRACK_FAILED in state:
            return TrackFailed.model_validate(state[TRACK_FAILED])
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------------


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The partition numbers of a topic on the broker (empty when it does not exist).

    Asked of the admin API: a consumer that has not subscribed knows no topic's partitions
    (Apache Kafka answers a metadata request only for the topics named in it)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        return []
    return sorted(p["partition"] for p in described.get("partitions", []))


async def _start_positions(
    consumer: Any, partitions: list[Any], from_offset: int | None, from_time: datetime | None
) -> dict[Any, int]:
    if from_time is not None:
        found = await consumer.offsets_for_times(
            {tp: int(from_time.timestamp() * 1000) for tp in partitions}
        )
        starts: dict[Any, int] = {}
        for tp in partitions:
            hit = found.get(tp)
            if hit is None:  # nothing at or after that time
                starts[tp] = (await consumer.end_offsets([tp]))[tp]
            else:
                starts[tp] = hit.offset
        return starts
    return {tp: max(from_offset or 0, 0) for tp in partitions}


async def replay_async(
    settings: Settings,
    topic: str,
    *,
    from_offset: int | None = None,
    from_time: datetime | None = None,
    job_id: str | None = None,
    to_group: str | None = None,
    idle_s: float = 3.0,
) -> dict[str, Any]:
    """Reprocess a topic from an offset or a time.

    With ``to_group``: commit that position for a (new) consumer group; start a worker with
    ``--group`` to consume from there beside the live group. Without: re-publish the messages
    (those of ``job_id`` only, if given) onto the same topic for the live group.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    if to_group and job_id:
        raise ValueError("--job-id filters a re-publish; it cannot be combined with --to-group")
    common = kafka_client_kwargs(settings)
    broker_topic = physical(topic, settings.broker.topic_prefix)
    consumer = AIOKafkaConsumer(
        **common, group_id=to_group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    partitions = [
        TopicPartition(broker_topic, p) for p in await partitions_of(settings, broker_topic)
    ]
    if not partitions:
        raise ValueError(f"topic {broker_topic!r} does not exist")
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await _start_positions(consumer, partitions, from_offset, from_time)
        if to_group:
            from aiokafka.structs import OffsetAndMetadata

            await consumer.commit(
                {tp: OffsetAndMetadata(offset, "singtome replay") for tp, offset in starts.items()}
            )
            return {
                "topic": topic,
                "group": to_group,
                "positions": {tp.partition: offset for tp, offset in starts.items()},
            }
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        selected: list[tuple[bytes | None, bytes]] = []
        scanned = 0
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    scanned += 1
                    if job_id is None or (record.key or b"").decode(errors="replace") == job_id:
                        selected.append((record.key, record.value))
    finally:
        await consumer.stop()
    await publish_raw_async(settings, topic, selected)
    return {"topic": topic, "scanned": scanned, "republished": len(selected)}


def replay(settings: Settings, topic: str, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(replay_async(settings, topic, **kwargs))
