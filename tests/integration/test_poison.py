"""Every message answered, every job isolated: poison corpora and key isolation on the real broker
and the real S3 server.

One worker per stage: the real separator (its audio checks are part of the corpus), the
copy-and-tag test stages for the other three. For each stage topic a corpus of bad messages is
published in one go; each must be answered by ``track.failed`` with its own code within 10 s, its
original must be in ``<topic>.dlq``, and a good job published after the corpus must complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from frontends.stack import StackConfig
from schemas.events import (
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    VocalsConverted,
    VocalsSeparated,
    VoiceTrained,
    encode,
)
from streams.client import publish
from streams.store import InvalidKey, S3Store
from streams.topics import (
    SONG_UPLOADED,
    STAGES,
    TRACK_FAILED,
    TRACK_READY,
    VOCALS_CONVERTED,
    VOCALS_SEPARATED,
    VOICE_TRAINED,
    dlq,
)
from tests.events import voice_options
from tests.pipeline import Pipeline, read_records

ANSWER_WITHIN_S = 10.0
# Messages per topic published at once: a wave is answered well within ANSWER_WITHIN_S, so the
# latency measured is the worker's, not that of a queue this test built.
WAVE_PER_TOPIC = 16
SR = 44100
DELETE = object()  # an _event() change that removes the field
CONSUMER = {stage.consumes: name for name, stage in STAGES.items()}


@dataclass
class Poison:
    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    code: str
    answer_id: str  # the job id the failure must be answered under
    headers: list[tuple[str, bytes]] | None = None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _wav(samples: np.ndarray, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _song_samples() -> np.ndarray:
    return (0.3 * np.sin(np.linspace(0, 3000, SR))).astype(np.float32)


def _base(topic: str, job_id: str) -> dict[str, Any]:
    """A valid event of ``topic`` naming objects under the job's own upload prefix."""
    own = f"uploads/{job_id}"
    keys = ObjectKeys(song=f"{own}/song.wav")
    options = voice_options(job_id)
    if topic == SONG_UPLOADED:
        event: Any = SongUploaded(job_id=job_id, keys=keys, options=options)
        event.options.separator.skip = True
        return json.loads(encode(event))
    # Every downstream event carries the accompaniment on to the mixer.
    keys.accompaniment = f"{own}/accompaniment.wav"
    if topic == VOCALS_SEPARATED:
        keys.vocals = f"{own}/vocals.wav"
        event = VocalsSeparated(
            job_id=job_id,
            keys=keys,
            options=options,
            sample_rate=SR,
            duration_s=1.0,
            separator_model="x",
        )
    elif topic == VOICE_TRAINED:
        keys.vocals, keys.voice_model = f"{own}/vocals.wav", f"{own}/model.pth"
        event = VoiceTrained(job_id=job_id, keys=keys, options=options, voice_kind="world")
    else:
        keys.converted_vocals = f"{own}/converted.wav"
        event = VocalsConverted(
            job_id=job_id,
            keys=keys,
            options=options,
            backend="world",
            sample_rate=SR,
            duration_s=1.0,
        )
    return json.loads(encode(event))


# The field of each topic's event that the stage reads its input from.
INPUT_FIELD = {
    SONG_UPLOADED: "keys.song",
    VOCALS_SEPARATED: "keys.vocals",
    VOICE_TRAINED: "keys.vocals",
    VOCALS_CONVERTED: "keys.converted_vocals",
}
# A field each topic's event requires, and a value of the wrong type for one.
REQUIRED_FIELD = {
    SONG_UPLOADED: "keys.song",
    VOCALS_SEPARATED: "sample_rate",
    VOICE_TRAINED: "voice_kind",
    VOCALS_CONVERTED: "backend",
}
WRONG_TYPE = {
    SONG_UPLOADED: ("options.separator.skip", "maybe"),
    VOCALS_SEPARATED: ("duration_s", "long"),
    VOICE_TRAINED: ("voice_kind", 7),
    VOCALS_CONVERTED: ("sample_rate", [44100]),
}


def _set(event: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = event
    for name in parents:
        target = target.setdefault(name, {})
    if value is DELETE:
        target.pop(last, None)
    else:
        target[last] = value


def corpus(topic: str, tag: str) -> list[Poison]:
    """Over 60 kinds of bad message for ``topic``; job ids start with ``tag``."""
    stage = CONSUMER[topic]
    items: list[Poison] = []
    counter = iter(range(1000))

    def new_id() -> str:
        return f"{tag}-{stage[:3]}-{next(counter):02d}"

    def raw(kind: str, value: bytes | None, code: str = "malformed_event", **kw: Any) -> None:
        job_id = new_id()
        key = kw.pop("key", job_id.encode())
        answer = kw.pop("answer", job_id)
        items.append(Poison(kind, topic, key, value, code, answer, **kw))

    def event(kind: str, code: str = "malformed_event", **changes: Any) -> None:
        """The topic's valid event with ``changes`` (dotted path -> value, or DELETE)."""
        job_id = new_id()
        body = _base(topic, job_id)
        for path, value in changes.items():
            _set(body, path.replace("__", "."), value)
        answer = job_id
        if "job_id" in changes:
            bad = changes["job_id"]
            answer = (
                "invalid-" + _sha(bad.encode("utf-8", "surrogatepass"))
                if isinstance(bad, str)
                else job_id  # not a string: the message key (= the job id) is used
            )
        value = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        items.append(Poison(kind, topic, job_id.encode(), value, code, answer))

    def text(kind: str, make: Callable[[bytes], bytes], code: str = "malformed_event") -> None:
        """The valid event's bytes, changed by ``make``."""
        job_id = new_id()
        value = make(json.dumps(_base(topic, job_id)).encode())
        items.append(Poison(kind, topic, job_id.encode(), value, code, job_id))

    # --- bytes and text -------------------------------------------------------------------------
    raw("tombstone", None)
    # (a null key and a null value together: aiokafka refuses to send that)
    tomb_key = b"\xc0" + tag.encode() + stage.encode()
    raw("tombstone, key not UTF-8", None, key=tomb_key, answer="invalid-" + _sha(tomb_key))
    raw("empty value", b"")
    raw("binary garbage", bytes(range(256)) * 4)
    garbage = b"\x00\x01garbage " + topic.encode()
    raw("garbage without key", garbage, key=None, answer="unknown-" + _sha(garbage))
    bad_key = b"\xff\xfe" + tag.encode() + stage.encode()
    raw("key not UTF-8", b"{}", key=bad_key, answer="invalid-" + _sha(bad_key))
    long_key = (tag + stage).encode() * 700
    raw("key of 10 KB", b"{}", key=long_key, answer="invalid-" + _sha(long_key))
    headers = [(f"h{i}", bytes([i]) * i) for i in range(40)] + [("\u00e9", b"\xff" * 300)]
    raw("odd headers", b"not json", headers=headers)
    text("invalid UTF-8 in a string", lambda b: b.replace(b"song.wav", b"s\xffng.wav", 1))
    text("UTF-8 byte-order mark", lambda b: b"\xef\xbb\xbf" + b)
    text("UTF-16", lambda b: b.decode().encode("utf-16"))
    text("UTF-16 without BOM", lambda b: b.decode().encode("utf-16-le"))
    raw("arrays nested 100 000 deep", b"[" * 100_000 + b"]" * 100_000)
    raw("objects nested 40 000 deep", b'{"a":' * 40_000 + b"1" + b"}" * 40_000)
    text("a field nested 40 deep", lambda b: b[:-1] + b', "x": ' + b"[" * 40 + b"]" * 40 + b"}")
    text("integer of 5000 digits", lambda b: b[:-1] + b', "x": ' + b"7" * 5000 + b"}")
    text(
        "epochs of 5000 digits",
        lambda b: b.replace(b'"epochs": 20', b'"epochs": ' + b"2" * 5000),
    )
    text("float 1e999", lambda b: b[:-1] + b', "x": 1e999}')
    text("NaN", lambda b: b[:-1] + b', "x": NaN}')
    text("Infinity", lambda b: b[:-1] + b', "x": -Infinity}')
    text("duplicate job_id", lambda b: b[:-1] + b', "job_id": "someone-else"}')
    text("trailing garbage", lambda b: b + b" {}")
    text("truncated", lambda b: b[: len(b) // 2])
    text("lone surrogate escape", lambda b: b[:-1] + b', "x": "\\ud800"}')
    text("NUL in a string", lambda b: b[:-1] + b', "x": "a\\u0000b"}')
    raw("top-level array", b'[{"job_id": "x"}]')
    raw("top-level string", b'"song.uploaded"')
    raw("top-level null", b"null")
    raw("top-level number", b"42")
    raw("JSON with a comment", b'{"job_id": "x" /* hi */}')
    # --- sizes ---------------------------------------------------------------------------------
    event("string of 20 000 characters", options__output__title="t" * 20_000)
    event("over SINGTOME_MAX_EVENT_BYTES", "event_too_large", options__output__title="t" * 300_000)
    # --- ids -----------------------------------------------------------------------------------
    event("job_id missing", job_id=DELETE)
    for bad in ("jöb-ü-🎵", ".", "..", "", "j" * 2000, "a/b", " padded ", "job\n"):
        event(f"job_id {bad[:12]!r}", job_id=bad)
    event("job_id a number", job_id=5)
    event("job_id null", job_id=None)
    for bad in ("a/../b", "..", "e" * 2000, "ëvent", "", "a b"):
        event(f"event_id {bad[:12]!r}", event_id=bad)
    event("event_id a number", event_id=7)
    # --- envelope -----------------------------------------------------------------------------
    event("major version 2", "unsupported_schema_version", schema_version="2.0")
    event("major version 99", "unsupported_schema_version", schema_version="99.1")
    event("version not a number", schema_version="one")
    event("version of 5000 digits", schema_version="1" * 5000 + ".0")
    event("version an integer", schema_version=1)
    event("occurred_at not a date", occurred_at="yesterday")
    event("occurred_at without a zone", occurred_at="2026-01-01T10:00:00")
    event("options a string", options="fast")
    event("epochs negative", options__voice__epochs=-1)
    event("epochs fractional", options__voice__epochs=1.5)
    event("output format unknown", options__output__format="exe")
    event("f0 method unknown", options__conversion__f0_method="magic")
    event("index without model", options__voice__index_key=f"uploads/{tag}/x.index")
    event("keys a list", keys=[])
    event("keys.song a number", keys__song=5)
    event("history a string", history="x")
    event("history item broken", history=[{"stage": 1}])
    event("required field missing", **{REQUIRED_FIELD[topic].replace(".", "__"): DELETE})
    wrong_path, wrong_value = WRONG_TYPE[topic]
    event("field of the wrong type", **{wrong_path.replace(".", "__"): wrong_value})
    # --- the key policy ----------------------------------------------------------------------
    field = INPUT_FIELD[topic].replace(".", "__")
    other = f"uploads/{tag}-other-job/song.wav"
    event("another job's upload", "forbidden_key", **{field: other})
    event("another job's upload in keys.song", "forbidden_key", keys__song=other)
    event("every upload as the dataset", "forbidden_key", options__voice__dataset_key="uploads/")
    event("a '../' key", "forbidden_key", **{field: f"uploads/{tag}/../other/song.wav"})
    event("S3 refuses: ../otherbucket", "forbidden_key", **{field: "../otherbucket/x"})
    event("a scheme", "forbidden_key", **{field: "s3://other/x"})
    event("a leading '/'", "forbidden_key", **{field: f"/uploads/{tag}/song.wav"})
    event("a shared prefix not configured", "forbidden_key", options__voice__model_key="m/x.pth")
    event("stems without a digest", "forbidden_key", keys__vocals="stems/short/vocals.flac")
    event("another job's track", "forbidden_key", keys__track="tracks/other/cover.mp3")
    event("job state as input", "forbidden_key", **{field: f"jobs/{tag}/track.ready.json"})
    items_before = len(items)
    event("key of 1100 bytes", "invalid_key", **{field: "uploads/x/" + "k" * 1100})
    event("key with a newline", "invalid_key", **{field: "uploads/x/a\nb.wav"})
    event("key with '//'", "invalid_key", **{field: "uploads/x//b.wav"})
    for item in items[items_before:]:  # under the job's own prefix: only the form is wrong
        item.value = (item.value or b"").replace(
            b"uploads/x/", f"uploads/{item.answer_id}/".encode()
        )
    event("missing object", "missing_object", **{field: "uploads/{job}/nothing-here.wav"})
    items[-1].value = (items[-1].value or b"").replace(b"{job}", items[-1].answer_id.encode())
    return items


def audio_corpus(store: S3Store, tag: str) -> list[Poison]:
    """Bad songs for the real separator, each uploaded under its own job's prefix."""
    song = _song_samples()
    nan, inf = song.copy(), song.copy()
    nan[20_000:20_010] = np.nan
    inf[30_000] = np.inf
    good_wav = _wav(song, "PCM_16")
    songs = {
        "NaN samples": (_wav(nan), "invalid_audio"),
        "infinite samples": (_wav(inf), "invalid_audio"),
        "text, not audio": (b"these are the lyrics, not the song\n" * 50, "not_audio"),
        "empty file": (b"", "empty_audio"),
        "truncated WAV": (good_wav[: len(good_wav) // 2], "corrupt_audio"),
        "silent": (_wav(np.zeros(SR, np.float32)), "silent_audio"),
    }
    items = []
    for i, (kind, (data, code)) in enumerate(songs.items()):
        job_id = f"{tag}-aud-{i:02d}"
        store.put_bytes(f"uploads/{job_id}/song.wav", data)
        value = json.dumps(_base(SONG_UPLOADED, job_id)).encode()
        items.append(Poison(kind, SONG_UPLOADED, job_id.encode(), value, code, job_id))
    job_id = f"{tag}-aud-model"
    store.put_bytes(f"uploads/{job_id}/song.wav", good_wav)
    body = _base(SONG_UPLOADED, job_id)
    body["options"]["separator"] = {"skip": False, "model": "../../../etc/x.onnx"}
    items.append(
        Poison("model outside the model dir", SONG_UPLOADED, job_id.encode(),
               json.dumps(body).encode(), "model_not_found", job_id)
    )  # fmt: skip
    return items


@pytest.fixture(scope="module")
def line(stack: StackConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The real separator and the test trainer, converter and mixer, on their own topics."""
    pipeline = Pipeline(stack, logs=tmp_path_factory.mktemp("poison-logs"))
    try:
        started = [pipeline.start_worker("separator", wait=False)] + [
            pipeline.start_worker(stage, f"tests.stages:{stage}", wait=False)
            for stage in ("trainer", "converter", "mixer")
        ]
        for proc, port in started:
            pipeline.wait_ready(proc, port, timeout_s=180)
        yield pipeline
    finally:
        pipeline.stop()


async def _publish_all(line: Pipeline, items: list[Poison]) -> dict[int, float]:
    """Publish every message at once; returns the send time (ms) of each, by index."""
    from aiokafka import AIOKafkaProducer

    from streams.admin import kafka_client_kwargs

    producer = AIOKafkaProducer(
        **kafka_client_kwargs(line.settings), acks="all", max_request_size=2 << 20
    )
    await producer.start()
    sent: dict[int, float] = {}
    try:
        pending = []
        for index, item in enumerate(items):
            sent[index] = time.time() * 1000
            pending.append(
                await producer.send(
                    line.topic(item.topic),
                    item.value,
                    key=item.key,
                    headers=item.headers,
                    timestamp_ms=int(sent[index]),
                )
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def _json_or_none(value: bytes | None) -> Any:
    try:
        return json.loads(value or b"")
    except (ValueError, RecursionError):  # the poison is on these topics too
        return None


def _last_stage(event: dict[str, Any]) -> str | None:
    history = event.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        return history[-1].get("stage")
    return None


def _records(line: Pipeline, topic: str, until: int, timeout_s: float) -> list[Any]:
    return asyncio.run(read_records(line.settings, line.topic(topic), until, timeout_s))


def _good_song(line: Pipeline, job_id: str) -> SongUploaded:
    key = f"uploads/{job_id}/song.wav"
    line.store.put_bytes(key, _wav(_song_samples(), "PCM_16"))
    event = SongUploaded(job_id=job_id, keys=ObjectKeys(song=key), options=voice_options(job_id))
    event.options.separator.skip = True  # a cappella: no model weights needed
    return event


def test_poison_corpus_on_every_stage_topic_is_answered_and_a_good_job_completes(
    line: Pipeline,
) -> None:
    tag = "p" + uuid.uuid4().hex[:6]
    items = [p for topic in CONSUMER for p in corpus(topic, tag)]
    items += audio_corpus(line.store, tag)
    per_topic = {topic: sum(p.topic == topic for p in items) for topic in CONSUMER}
    assert min(per_topic.values()) >= 60, per_topic
    answers = {(CONSUMER[p.topic], p.answer_id) for p in items}
    assert len(answers) == len(items), "each poison is told apart by its stage and job id"

    # Each worker answers once before the corpus goes out, so its start is not measured.
    warm = [Poison("warm-up", t, f"{tag}-warm-{i}".encode(), b"warm", "", "") for i, t in
            enumerate(CONSUMER)]  # fmt: skip
    asyncio.run(_publish_all(line, warm))
    _records(line, TRACK_FAILED, until=len(warm), timeout_s=120)
    waves: list[list[int]] = []
    for topic in CONSUMER:
        mine = [i for i, p in enumerate(items) if p.topic == topic]
        for n in range(0, len(mine), WAVE_PER_TOPIC):
            if len(waves) <= n // WAVE_PER_TOPIC:
                waves.append([])
            waves[n // WAVE_PER_TOPIC] += mine[n : n + WAVE_PER_TOPIC]
    sent: dict[int, float] = {}
    published = len(warm)
    started = time.monotonic()
    for wave in waves:
        times = asyncio.run(_publish_all(line, [items[i] for i in wave]))
        sent.update({index: times[n] for n, index in enumerate(wave)})
        published += len(wave)
        _records(line, TRACK_FAILED, until=published, timeout_s=60)
    corpus_s = time.monotonic() - started
    good = _good_song(line, f"{tag}-good")
    publish(line.settings, good)  # after every poison of the first stage

    failed = _records(line, TRACK_FAILED, until=published, timeout_s=120)
    by_answer: dict[tuple[str, str], list[tuple[TrackFailed, int]]] = {}
    for record in failed:
        failure = TrackFailed.model_validate_json(record.value)
        by_answer.setdefault((failure.stage, failure.job_id), []).append(
            (failure, record.timestamp)
        )
    problems = []
    latencies = []
    for index, item in enumerate(items):
        stage = CONSUMER[item.topic]
        got = by_answer.get((stage, item.answer_id), [])
        if len(got) != 1:
            problems.append(f"{stage} {item.kind!r}: {len(got)} answers under {item.answer_id}")
            continue
        failure, answered_at = got[0]
        latency = (answered_at - sent[index]) / 1000
        latencies.append(latency)
        if failure.code != item.code or failure.source_topic != item.topic:
            problems.append(f"{stage} {item.kind!r}: {failure.code} ({failure.message})")
        elif latency > ANSWER_WITHIN_S:
            problems.append(f"{stage} {item.kind!r}: answered after {latency:.1f} s")
        elif failure.retriable or not failure.message:
            problems.append(f"{stage} {item.kind!r}: retriable or without a message")
    assert not problems, "\n".join(problems)
    print(
        json.dumps(
            {
                "poison_messages": len(items),
                "per_topic": per_topic,
                "waves": len(waves),
                "answer_s_max": round(max(latencies), 2),
                "answer_s_median": round(float(np.median(latencies)), 2),
                "corpus_s": round(corpus_s, 1),
            }
        )
    )

    ready = line.by_job(TRACK_READY, {good.job_id}, timeout_s=120)[good.job_id]
    assert [r.stage for r in ready.history] == ["separator", "trainer", "converter", "mixer"]
    for proc in line.procs:
        assert proc.poll() is None, "no worker died"

    for topic in CONSUMER:  # the originals, unchanged, with the code in a header
        mine = [p for p in items if p.topic == topic]
        dead = _records(line, dlq(topic), until=len(mine), timeout_s=60)
        copies = {(r.value, dict(r.headers or ()).get("singtome-error-code")) for r in dead}
        for item in mine:
            assert (item.value, item.code.encode()) in copies, (topic, item.kind)
        # What the stage produced (the output topic also holds the poison published to the
        # next stage; a stage's own answers carry it last in their history): the good job only.
        stage = CONSUMER[topic]
        outputs = (_json_or_none(r.value) for r in _records(line, STAGES[stage].produces, 0, 3))
        produced = [e["job_id"] for e in outputs if isinstance(e, dict) and _last_stage(e) == stage]
        assert produced == [good.job_id], (stage, produced)


def _refusals(line: Pipeline, tag: str) -> dict[str, TrackFailed]:
    failures: dict[str, TrackFailed] = {}
    for record in _records(line, TRACK_FAILED, 0, 3):
        failure = TrackFailed.model_validate_json(record.value)
        if failure.job_id.startswith(tag):
            failures[failure.job_id] = failure
    return failures


def test_jobs_are_isolated_from_each_other(line: Pipeline) -> None:
    """A job naming another job's upload, every upload, or a key that climbs out, is refused,
    whichever stage reads it; its own uploads still work; S3's own refusals are invalid_key."""
    tag = "iso" + uuid.uuid4().hex[:6]
    victim = f"{tag}-victim"
    victim_song = _good_song(line, victim)
    for name in ("a.wav", "b.wav"):
        line.store.put_bytes(f"uploads/{victim}/voice/{name}", b"the victim's voice")
    attacks = {
        "steal-song": ("keys.song", victim_song.keys.song),
        "all-uploads": ("options.voice.dataset_key", "uploads/"),
        "victim-voice": ("options.voice.dataset_key", f"uploads/{victim}/voice/"),
        "climb": ("keys.song", f"uploads/{tag}-climb/../{victim}/song.wav"),
        "other-bucket": ("keys.song", "../otherbucket/x"),
        "scheme": ("keys.song", f"s3://{line.settings.storage.bucket}/uploads/{victim}/song.wav"),
        "rooted": ("keys.song", f"/uploads/{victim}/song.wav"),
    }
    events: list[Any] = []
    for name, (path, key) in attacks.items():
        job_id = f"{tag}-{name}"
        base = _good_song(line, job_id)
        body = json.loads(encode(base))
        _set(body, path, key)
        events.append((SONG_UPLOADED, job_id, body))
        # the same key on a later stage's event, where the trainer would read it
        later = _base(VOCALS_SEPARATED, f"{job_id}-t")
        _set(later, "keys.vocals", key if path == "keys.song" else later["keys"]["vocals"])
        if path != "keys.song":
            _set(later, path, key)
        events.append((VOCALS_SEPARATED, f"{job_id}-t", later))
    items = [
        Poison(f"{topic} {job}", topic, job.encode(), json.dumps(body).encode(), "", job)
        for topic, job, body in events
    ]
    asyncio.run(_publish_all(line, items))
    publish(line.settings, victim_song)  # the victim's own job still works

    expected = {job for _, job, _ in events}
    deadline = time.monotonic() + 60
    while not expected <= set(refused := _refusals(line, tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {job: refused[job].code for job in expected} == dict.fromkeys(expected, "forbidden_key")
    for topic, job, _ in events:
        failure = refused[job]
        assert not failure.retriable and failure.source_topic == topic
        assert "keys." in failure.message or "options.voice.dataset_key" in failure.message
    line.by_job(TRACK_READY, {victim}, timeout_s=120)
    # Nothing was read on an attacker's behalf: no stage answered an attacking job.
    for stage in ("separator", "trainer"):
        outputs = (_json_or_none(r.value) for r in _records(line, STAGES[stage].produces, 0, 3))
        answered = {e["job_id"] for e in outputs if isinstance(e, dict) and _last_stage(e) == stage}
        assert victim in answered or stage == "trainer"
        assert not answered & expected, answered & expected
    for topic in (SONG_UPLOADED, VOCALS_SEPARATED):
        dead = {r.value for r in _records(line, dlq(topic), 0, 3)}
        assert {i.value for i in items if i.topic == topic} <= dead, "the originals are kept"

    # Keys S3 itself refuses are invalid_key, not internal_error (the policy refuses them first;
    # here the store is asked directly, as a stage's own derived key would be).
    for key in ("../otherbucket/x", "uploads/x/" + "k" * 1100, "uploads/x/\ud800.wav"):
        with pytest.raises(InvalidKey):
            if len(key) > 1000:
                line.store.put_bytes(key, b"x")
            else:
                line.store.get_bytes(key)
