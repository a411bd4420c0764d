"""The per-event runner every agent shares.

For one raw Kafka message: check size → decode and validate → note duplicates → run the stage's
handler in an executor (off the event loop), retrying transient errors with backoff → record the
stage in the event's history → store the job state in S3 → send the next event. Any failure ends
in ``track.failed`` (stage, code, message, retriable, attempt) plus the original message in
``<topic>.dlq``; the runner never raises, so the agent keeps consuming.

The runner knows nothing of Faust: it sends through an :class:`Emitter`, which the Faust adapter
implements with real topics and the unit tests with a list.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from schemas.events import (
    Event,
    EventDecodeError,
    JobOptions,
    JobProgress,
    StageRecord,
    TrackFailed,
    decode,
    encode,
    follow_event_id,
    is_valid_id,
    peek_job_id,
)
from streams import keys as keylayout
from streams.errors import StageError, TransientError
from streams.keypolicy import KeyPolicy
from streams.logging import get_logger, job_context
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stage import Handler, StageContext
from streams.store import InvalidKey, ObjectNotFound, ObjectStore, TransientStoreError, put_json
from streams.topics import JOB_PROGRESS, TRACK_FAILED, StageTopics, dlq

log = get_logger(__name__)


class Emitter(Protocol):
    async def send(
        self, topic: str, key: str, value: bytes | None, headers: dict[str, bytes] | None = None
    ) -> None:
        """Send one message and return once the broker has acknowledged it (``value`` None: a
        tombstone, as a DLQ copy of one)."""
        ...


@dataclass
class Outcome:
    """What happened to one message (returned for tests and metrics)."""

    status: str  # "done" | "failed"
    job_id: str
    output: Event | None = None
    failure: TrackFailed | None = None
    duplicate: bool = False


@dataclass
class Runner:
    stage: StageTopics
    handler: Handler
    settings: Settings
    store: ObjectStore
    emitter: Emitter
    metrics: Metrics = field(default_factory=Metrics)
    executor: concurrent.futures.Executor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=1)
    )
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: called with the job id while a job is in hand, None when idle (used by the graceful drain)
    on_busy: Callable[[str | None], None] = lambda job_id: None
    #: which S3 keys an event may name; built from the settings when not given
    policy: KeyPolicy | None = None
    # whether the message in hand has been answered (one message at a time per runner)
    _answered: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = KeyPolicy(self.settings)

    @property
    def input_type(self) -> type[Event]:
        from schemas.events import BY_TOPIC

        return BY_TOPIC[self.stage.consumes]

    async def process(self, raw: bytes | None, key: bytes | None = None) -> Outcome:
        """Answer one message, whatever its bytes: the stage's output event, or ``track.failed``
        plus the original in the DLQ. Never raises (a cancellation still goes through)."""
        name = self.stage.stage
        self.metrics.events_in.labels(name).inc()
        self._answered = False
        try:
            return await self._process(raw, key)
        except Exception as exc:  # a bug in the runner itself: answered if not yet, never raised
            job_id = _safe_job_id(None, key, raw)
            with job_context(job_id=job_id):
                log.exception("the runner failed on a message")
                if not self._answered:
                    try:
                        return await self._fail(
                            raw, None, job_id, "internal_error", _message(exc), False, 1
                        )
                    except Exception:
                        log.exception("the runner could not answer a message")
            return Outcome("failed", job_id)

    async def _process(self, raw: bytes | None, key: bytes | None) -> Outcome:
        started = datetime.now(UTC)
        try:
            event = self._decode(raw)
        except EventDecodeError as exc:
            job_id = _safe_job_id(exc.job_id, key, raw)
            with job_context(job_id=job_id):
                return await self._fail(
                    raw, None, job_id, exc.code, exc.message, retriable=False, attempt=1
                )
        with job_context(job_id=event.job_id, event_id=event.event_id):
            self.on_busy(event.job_id)
            try:
                return await self._run(raw, event, started)
            finally:
                self.on_busy(None)

    def _decode(self, raw: bytes | None) -> Event:
        if raw is not None and len(raw) > self.settings.max_event_bytes:
            raise EventDecodeError(
                "event_too_large",
                f"event of {len(raw)} bytes is over the limit of "
                f"{self.settings.max_event_bytes} (SINGTOME_MAX_EVENT_BYTES)",
                peek_job_id(raw),
            )
        return decode(self.input_type, raw)

    async def _run(self, raw: bytes | None, event: Event, started: datetime) -> Outcome:
        name = self.stage.stage
        assert self.policy is not None
        try:  # every key the event names, before any S3 call
            self.policy.check_event(event)
        except StageError as exc:
            return await self._fail(raw, event, event.job_id, exc.code, exc.message, False, 1)
        duplicate = await self._offload(self._seen_before, event)
        if duplicate:
            self.metrics.duplicates.labels(name).inc()
            log.warning("duplicate delivery", source_event_id=event.event_id)
        log.info("stage started", topic=self.stage.consumes)
        started_state = event.follow(JobProgress, stage=name, fraction=0.0, message="started")
        await self._offload(self._save_state, started_state)
        attempt = 0
        while True:
            attempt += 1
            try:
                output = await self._call_handler(event)
                break
            except TimeoutError as exc:
                # The executor thread cannot be interrupted: the job is failed as retriable so a
                # replay resumes it, rather than retried here behind the stuck call.
                return await self._fail(
                    raw,
                    event,
                    event.job_id,
                    "timeout",
                    _message(exc),
                    retriable=True,
                    attempt=attempt,
                )
            except (TransientError, TransientStoreError) as exc:
                code = _transient_code(exc)
                if attempt > self.settings.transient_retries:
                    return await self._fail(
                        raw,
                        event,
                        event.job_id,
                        code,
                        _message(exc),
                        retriable=True,
                        attempt=attempt,
                    )
                delay = min(
                    self.settings.retry_backoff_s * 2 ** (attempt - 1),
                    self.settings.retry_backoff_max_s,
                )
                self.metrics.retries.labels(name).inc()
                log.warning(
                    "transient error, retrying",
                    code=code,
                    error=_message(exc),
                    attempt=attempt,
                    retry_in_s=delay,
                )
                await self.sleep(delay)
            except StageError as exc:
                return await self._fail(
                    raw, event, event.job_id, exc.code, exc.message, exc.retriable, attempt
                )
            except ObjectNotFound as exc:
                return await self._fail(
                    raw, event, event.job_id, "missing_object", str(exc), False, attempt
                )
            except InvalidKey as exc:
                return await self._fail(
                    raw, event, event.job_id, "invalid_key", str(exc), False, attempt
                )
            except Exception as exc:  # a bug in a stage must not stop the partition
                log.exception("stage crashed")
                return await self._fail(
                    raw,
                    event,
                    event.job_id,
                    "internal_error",
                    f"{type(exc).__name__}: {exc}",
                    False,
                    attempt,
                )
        finished = datetime.now(UTC)
        try:
            if not isinstance(output, Event) or output.job_id != event.job_id:
                raise TypeError(f"the handler returned {type(output).__name__} for another job")
            record = StageRecord(
                stage=name,
                started_at=started,
                finished_at=finished,
                cache_hit=bool(getattr(output, "cache_hit", False)),
            )
            output.history = [*event.history, record]
            value = encode(output)
        except Exception as exc:  # an answer that cannot be sent is the stage's bug
            log.exception("stage answer unusable")
            return await self._fail(
                raw,
                event,
                event.job_id,
                "internal_error",
                f"{type(exc).__name__}: {exc}",
                False,
                attempt,
            )
        await self._publish(output, value)
        elapsed = (finished - started).total_seconds()
        self.metrics.stage_seconds.labels(name).observe(elapsed)
        self.metrics.events_out.labels(name).inc()
        log.info(
            "stage done", topic=output.topic, seconds=round(elapsed, 3), cache_hit=record.cache_hit
        )
        return Outcome("done", event.job_id, output=output, duplicate=duplicate)

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking S3 calls run on the stage's thread, so the event loop (and with it the
        consumer's heartbeats) never waits on the network."""
        context = contextvars.copy_context()  # keeps job_id/stage on the thread's log lines
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, context.run, fn, *args
        )

    def _seen_before(self, event: Event) -> bool:
        """Mark this event as seen by the stage; True when it was seen before.

        A redelivery (worker crash, replay, re-publish) costs one lookup: the handler finds its
        outputs in place. Each one is also kept beside the job, for operators and tests.
        """
        prefix = keylayout.job_prefix(event.job_id)
        name = self.stage.stage
        try:
            if self.store.put_if_absent(f"{prefix}seen/{name}/{event.event_id}", b""):
                return False
            self.store.put_bytes(
                f"{prefix}duplicates/{name}/{event.event_id}-{uuid.uuid4().hex[:8]}", b""
            )
        except TransientStoreError:
            return False  # the handler meets the same outage and retries it
        except Exception as exc:  # bookkeeping only: it must never keep the event from an answer
            log.warning("duplicate check failed", error=_message(exc))
            return False
        return True

    async def _call_handler(self, event: Event) -> Event:
        loop = asyncio.get_running_loop()
        workdir = Path(tempfile.mkdtemp(prefix=f"singtome-{self.stage.stage}-"))
        progress = self._progress_fn(event, loop)
        assert self.policy is not None
        ctx = StageContext(
            stage=self.stage.stage,
            settings=self.settings,
            store=self.policy.store_for(self.store, event.job_id, workdir),
            workdir=workdir,
            progress=progress,
            force=event.options.force,
        )
        context = contextvars.copy_context()
        try:
            future = loop.run_in_executor(self.executor, context.run, self.handler, event, ctx)
            return await asyncio.wait_for(future, timeout=self.settings.stage_timeout_s)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _progress_fn(
        self, event: Event, loop: asyncio.AbstractEventLoop
    ) -> Callable[[float, str], None]:
        """A thread-safe progress reporter, at most one event a second (plus the last one)."""
        last = [0.0]

        def progress(fraction: float, message: str = "") -> None:
            now = time.monotonic()
            fraction = min(max(fraction, 0.0), 1.0)
            if fraction < 1.0 and now - last[0] < 1.0:
                return
            last[0] = now
            update = event.follow(
                JobProgress, stage=self.stage.stage, fraction=fraction, message=message
            )
            self._save_state(update)
            if loop.is_closed():  # the stage outlived its event (a timeout): nobody listens
                return
            asyncio.run_coroutine_threadsafe(
                self.emitter.send(JOB_PROGRESS, update.job_id, encode(update)), loop
            )

        return progress

    async def _publish(self, output: Event, value: bytes) -> None:
        """Job state to S3 first, then the event: a reader of the event finds the state."""
        await self._offload(self._save_state, output)
        self._answered = True
        await self.emitter.send(output.topic, output.job_id, value)

    def _save_state(self, event: Event) -> None:
        try:
            put_json(
                self.store,
                keylayout.job_event_key(event.job_id, event.topic),
                json.loads(event.model_dump_json()),
            )
        except Exception as exc:  # the state object is a convenience; the event is the record
            log.warning("job state not saved", error=str(exc))

    async def _fail(
        self,
        raw: bytes | None,
        event: Event | None,
        job_id: str,
        code: str,
        message: str,
        retriable: bool,
        attempt: int,
    ) -> Outcome:
        name = self.stage.stage
        message = _bounded(message)
        fields: dict[str, Any] = {
            "stage": name,
            "code": code,
            "message": message,
            "retriable": retriable,
            "attempt": attempt,
            "source_topic": self.stage.consumes,
            "source_event_id": event.event_id if event else None,
        }
        if event is not None:
            failure = event.follow(TrackFailed, **fields)
        else:
            # Answered under an id derived from the bytes, so a replay answers the same way.
            source = _digest(raw) if raw is not None else "tombstone"
            failure = TrackFailed(
                job_id=job_id if is_valid_id(job_id) else _safe_job_id(job_id, None, raw),
                event_id=follow_event_id(source, TrackFailed.topic, name, code),
                options=JobOptions(),
                **fields,
            )
        self.metrics.events_failed.labels(name, code).inc()
        log.error("stage failed", code=code, error=message, retriable=retriable, attempt=attempt)
        headers = {
            "singtome-error-code": code.encode(),
            "singtome-stage": name.encode(),
            "singtome-retriable": b"true" if retriable else b"false",
        }
        self._answered = True
        await self.emitter.send(dlq(self.stage.consumes), failure.job_id, raw, headers)
        await self._offload(self._save_state, failure)
        await self.emitter.send(TRACK_FAILED, failure.job_id, encode(failure))
        return Outcome("failed", failure.job_id, failure=failure)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _safe_job_id(candidate: str | None, key: bytes | None = None, raw: bytes | None = None) -> str:
    """The job id a failure is answered under; always matches the job_id pattern.

    The event's own ``job_id`` when it is usable; else the message key's (Kafka key = job id).
    An unusable one (``jöb-ü-🎵``, ``..``, 2000 characters, a key that is not UTF-8) becomes
    ``invalid-<32 hex of its sha256>``; none at all, ``unknown-<32 hex of the message's sha256>``:
    deterministic, so the same message is always answered under the same id.
    """
    if candidate is None and key:
        try:
            candidate = key.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid-" + _digest(key)
    if candidate is not None:
        if is_valid_id(candidate):
            return candidate
        return "invalid-" + _digest(candidate.encode("utf-8", "surrogatepass"))
    return "unknown-" + _digest(raw or b"")


# A track.failed message stays small whatever the error said.
MAX_MESSAGE_CHARS = 2000


def _bounded(message: str) -> str:
    """``message`` as one can always send it: valid UTF-8, at most MAX_MESSAGE_CHARS."""
    text = str(message).encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


def _transient_code(exc: BaseException) -> str:
    if isinstance(exc, StageError):
        return exc.code
    return "store_unavailable"


def _message(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the stage did not finish within SINGTOME_STAGE_TIMEOUT_S"
    return str(exc) or type(exc).__name__
