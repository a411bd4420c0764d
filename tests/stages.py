"""Test-only stage handlers: they copy objects and tag them, so the runtime can be tested without
models. Each real computation leaves a counter object, so tests can tell reuse from recomputation.

``SINGTOME_TEST_STAGE_SLEEP_S`` makes every computation hold the job that long (kill tests);
:func:`stuck` never returns (timeout tests).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from foundation.errors import StageError
from schemas.events import (
    SongUploaded,
    VocalsConverted,
    VocalsSeparated,
    VoiceTrained,
)
from streams import keys as keylayout
from streams.stage import StageContext, all_exist
from streams.store import ObjectNotFound


def counter_key(job_id: str, stage: str) -> str:
    """One object per real computation, grouped by job and stage."""
    return f"counters/{job_id}/{stage}/{uuid.uuid4().hex}"


def _compute(
    ctx: StageContext, job_id: str, source_key: str | None, outputs: dict[str, str], tag: str
) -> bool:
    """Write ``tag + source bytes`` to each output key unless all exist; True when reused."""
    if not source_key:
        raise StageError("missing_object", "the event names no input object")
    if all_exist(ctx, list(outputs.values())):
        return True
    try:
        data = ctx.store.get_bytes(source_key)
    except ObjectNotFound:
        raise StageError("missing_object", f"object not found: {source_key}") from None
    hold = float(os.environ.get("SINGTOME_TEST_STAGE_SLEEP_S", "0"))
    for step in range(10):
        ctx.progress(step / 10, f"step {step}")
        time.sleep(hold / 10)
    ctx.store.put_bytes(counter_key(job_id, ctx.stage), b"")
    for name, key in outputs.items():
        ctx.store.put_bytes(key, f"{tag}:{name}:".encode() + data)
    return False


def _digest(ctx: StageContext, *parts: str) -> str:
    return keylayout.content_digest(list(parts), {"test": ctx.stage}, "test", ctx.stage)


def separator(event: SongUploaded, ctx: StageContext) -> VocalsSeparated:
    digest = _digest(ctx, event.keys.song or "")
    outputs = {
        "vocals": keylayout.stem_key(digest, "vocals"),
        "accompaniment": keylayout.stem_key(digest, "accompaniment"),
    }
    hit = _compute(ctx, event.job_id, event.keys.song, outputs, "separated")
    keys = event.keys.model_copy(update=outputs)
    return event.follow(
        VocalsSeparated,
        keys=keys,
        sample_rate=44100,
        duration_s=1.0,
        separator_model="copy",
        cache_hit=hit,
    )


def trainer(event: VocalsSeparated, ctx: StageContext) -> VoiceTrained:
    digest = _digest(ctx, event.keys.vocals or "")
    model = keylayout.voice_prefix(digest) + "model.pth"
    hit = _compute(ctx, event.job_id, event.keys.vocals, {"model": model}, "trained")
    keys = event.keys.model_copy(update={"voice_model": model})
    return event.follow(VoiceTrained, keys=keys, voice_kind="world", cache_hit=hit)


def converter(event: VoiceTrained, ctx: StageContext) -> VocalsConverted:
    digest = _digest(ctx, event.keys.vocals or "", event.keys.voice_model or "")
    out = keylayout.converted_key(digest)
    hit = _compute(ctx, event.job_id, event.keys.vocals, {"converted": out}, "converted")
    keys = event.keys.model_copy(update={"converted_vocals": out})
    return event.follow(
        VocalsConverted,
        keys=keys,
        backend="world",
        sample_rate=44100,
        duration_s=1.0,
        cache_hit=hit,
    )


def mixer(event: VocalsConverted, ctx: StageContext):  # type: ignore[no-untyped-def]
    from schemas.events import TrackReady

    key = keylayout.track_key(_digest(ctx, event.keys.converted_vocals or ""), "wav")
    hit = _compute(ctx, event.job_id, event.keys.converted_vocals, {"track": key}, "mixed")
    keys = event.keys.model_copy(update={"track": key})
    return event.follow(
        TrackReady, keys=keys, track_key=key, format="wav", duration_s=1.0, cache_hit=hit
    )


def stuck(event: SongUploaded, ctx: StageContext) -> VocalsSeparated:
    """A separator that never returns, like a call wedged in native code or on a dead mount.
    Each call leaves a counter object, so a test can tell whether the job was taken again."""
    ctx.store.put_bytes(counter_key(event.job_id, ctx.stage), b"")
    threading.Event().wait()
    raise AssertionError("unreachable")
