"""The per-event runner every agent shares.

For one raw Kafka message: check size → decode and validate → note duplicates → run the stage's
handler in an executor (off the event loop), retrying transient errors with backoff → record the
stage in the event's history → store the job state in S3 → send the next event. Any failure ends
in ``track.failed`` (stage, code, message, retriable, attempt) plus the original message in
``<topic>.dlq``; the runner never raises, so the agent keeps consuming.

A DLQ copy too large for the broker goes to S3 with a small reference record in the DLQ topic
(claim check). Job-state writes run on their own executor, so a stage call stuck past its timeout
does not hold its own ``track.failed`` back; the call is left in :attr:`Runner.stuck_call` for the
worker to watch. Sends the broker does not acknowledge are counted and logged; a message whose
answer could not be sent at all is reported as not answered, so the worker does not commit it.

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
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from foundation.errors import StageError, TransientError, is_retriable
from foundation.logging import get_logger, job_context
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
from streams.keypolicy import KeyPolicy
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stage import Handler, StageContext
from streams.store import InvalidKey, ObjectNotFound, ObjectStore, TransientStoreError, put_json
from streams.topics import JOB_PROGRESS, TRACK_FAILED, StageTopics, dlq, physical

log = get_logger(__name__)

# Room for a record's framing (batch header, lengths, timestamps) beside its key, value and
# headers, when deciding whether a message fits SINGTOME_MAX_MESSAGE_BYTES.
RECORD_OVERHEAD_BYTES = 512

CLAIM_CHECK_HEADER = "singtome-claim-check"


class SendError(Exception):
    """A send the broker did not acknowledge: refused, or unanswered through every retry."""

    def __init__(
        self, topic: str, message: str, *, too_large: bool = False, permanent: bool = False
    ) -> None:
        super().__init__(f"send to {topic} failed: {message}")
        self.topic = topic
        self.too_large = too_large
        self.permanent = permanent or too_large


class Emitter(Protocol):
    async def send(
        self, topic: str, key: str, value: bytes | None, headers: dict[str, bytes] | None = None
    ) -> None:
        """Send one message and return once the broker has acknowledged it (``value`` None: a
        tombstone, as a DLQ copy of one); raise :class:`SendError` when it was refused or a
        bounded number of retries ran out."""
        ...


@dataclass
class Outcome:
    """What happened to one message (returned for tests and metrics)."""

    status: str  # "done" | "failed"
    job_id: str
    output: Event | None = None
    failure: TrackFailed | None = None
    duplicate: bool = False
    #: False when not even track.failed could be sent: the message must not be committed
    answered: bool = True


@dataclass
class Runner:
    stage: StageTopics
    handler: Handler
    settings: Settings
    store: ObjectStore
    emitter: Emitter
    metrics: Metrics = field(default_factory=Metrics)
    #: the stage's handler: one call at a time
    executor: concurrent.futures.Executor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="singtome-stage"
        )
    )
    #: job-state and duplicate-check writes, never queued behind a stage call (a stuck one)
    state_executor: concurrent.futures.Executor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="singtome-state"
        )
    )
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: called with the job id while a job is in hand, None when idle (used by the graceful drain)
    on_busy: Callable[[str | None], None] = lambda job_id: None
    #: which S3 keys an event may name; built from the settings when not given
    policy: KeyPolicy | None = None
    #: False: no stage call times out (the one-process cover, where the person waiting at the
    #: terminal can stop it; a worker always bounds its calls by SINGTOME_STAGE_TIMEOUT_S)
    bounded: bool = True
    # whether the message in hand has been answered (one message at a time per runner)
    _answered: bool = field(default=False, init=False, repr=False)
    #: a stage call that outlived its timeout, while it may still be running (the worker
    #: waits SINGTOME_STUCK_GRACE_S for it, then exits to be restarted)
    stuck_call: concurrent.futures.Future[Any] | None = field(default=None, init=False)
    #: (partition, offset) of the message in hand, for the claim-check key
    _origin: tuple[int | None, int | None] = field(default=(None, None), init=False)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = KeyPolicy(self.settings)

    @property
    def input_type(self) -> type[Event]:
        from schemas.events import BY_TOPIC

        return BY_TOPIC[self.stage.consumes]

    async def process(
        self,
        raw: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Outcome:
        """Answer one message, whatever its bytes: the stage's output event, or ``track.failed``
        plus the original in the DLQ. Never raises (a cancellation still goes through)."""
        name = self.stage.stage
        self._origin = (partition, offset)
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
                            raw, None, job_id, "internal_error", _message(exc), 1
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
                return await self._fail(raw, None, job_id, exc.code, exc.message, attempt=1)
        with job_context(job_id=event.job_id, event_id=event.event_id):
            self.on_busy(event.job_id)
            try:
                return await self._run(raw, event, started)
            finally:
                self.on_busy(None)

    def _decode(self, raw: bytes | None) -> Event:
        if raw is not None and len(raw) > self.settings.broker.max_event_bytes:
            raise EventDecodeError(
                "event_too_large",
                f"event of {len(raw)} bytes is over the limit of "
                f"{self.settings.broker.max_event_bytes} (SINGTOME_MAX_EVENT_BYTES)",
                peek_job_id(raw),
            )
        return decode(self.input_type, raw)

    async def _run(self, raw: bytes | None, event: Event, started: datetime) -> Outcome:
        name = self.stage.stage
        assert self.policy is not None
        try:  # every key the event names, before any S3 call
            self.policy.check_event(event)
        except StageError as exc:
            return await self._fail(raw, event, event.job_id, exc.code, exc.message, 1)
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
                    attempt=attempt,
                )
            except (TransientError, TransientStoreError) as exc:
                code = _transient_code(exc)
                if attempt > self.settings.runtime.transient_retries:
                    return await self._fail(
                        raw,
                        event,
                        event.job_id,
                        code,
                        _message(exc),
                        attempt=attempt,
                    )
                delay = min(
                    self.settings.runtime.retry_backoff_s * 2 ** (attempt - 1),
                    self.settings.runtime.retry_backoff_max_s,
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
                return await self._fail(raw, event, event.job_id, exc.code, exc.message, attempt)
            except ObjectNotFound as exc:
                return await self._fail(
                    raw, event, event.job_id, "missing_object", str(exc), attempt
                )
            except InvalidKey as exc:
                return await self._fail(raw, event, event.job_id, "invalid_key", str(exc), attempt)
            except Exception as exc:  # a bug in a stage must not stop the partition
                log.exception("stage crashed")
                return await self._fail(
                    raw,
                    event,
                    event.job_id,
                    "internal_error",
                    f"{type(exc).__name__}: {exc}",
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
                attempt,
            )
        try:
            await self._publish(output, value)
        except SendError as exc:
            self._send_failed(exc)
            return await self._fail(
                raw,
                event,
                event.job_id,
                "output_too_large" if exc.too_large else "broker_unavailable",
                str(exc),
                attempt=attempt,
                permanent=exc.permanent,
            )
        elapsed = (finished - started).total_seconds()
        self.metrics.stage_seconds.labels(name).observe(elapsed)
        self.metrics.events_out.labels(name).inc()
        log.info(
            "stage done", topic=output.topic, seconds=round(elapsed, 3), cache_hit=record.cache_hit
        )
        return Outcome("done", event.job_id, output=output, duplicate=duplicate)

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking S3 calls run on the state threads, so the event loop (and with it the
        consumer's heartbeats) never waits on the network, and a stuck stage call never holds
        them back."""
        context = contextvars.copy_context()  # keeps job_id/stage on the thread's log lines
        return await asyncio.get_running_loop().run_in_executor(
            self.state_executor, context.run, fn, *args
        )

    def _seen_before(self, event: Event) -> bool:
        """Mark this event as seen by the stage; True when it was seen before.

        A redelivery (worker crash, replay, re-publish) costs one lookup: the handler finds its
        outputs in place. Each one is also kept beside the job, for operators and tests.
        """
        job_id, name, event_id = event.job_id, self.stage.stage, event.event_id
        try:
            if self.store.put_if_absent(keylayout.seen_key(job_id, name, event_id), b""):
                return False
            nonce = uuid.uuid4().hex[:8]
            self.store.put_bytes(keylayout.duplicate_key(job_id, name, event_id, nonce), b"")
        except TransientStoreError:
            return False  # the handler meets the same outage and retries it
        except Exception as exc:  # bookkeeping only: it must never keep the event from an answer
            log.warning("duplicate check failed", error=_message(exc))
            return False
        return True

    async def _call_handler(self, event: Event) -> Event:
        loop = asyncio.get_running_loop()
        workdir = Path(tempfile.mkdtemp(prefix=f"singtome-{self.stage.stage}-"))
        answered = threading.Event()  # set once the job is answered without this call
        progress = self._progress_fn(event, loop, answered)
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
        call = self.executor.submit(context.run, self.handler, event, ctx)
        # The work dir goes when the call ends, which may be long after a timeout.
        call.add_done_callback(lambda _: shutil.rmtree(workdir, ignore_errors=True))
        waiting = asyncio.wrap_future(call)
        # Whatever the call ends with after nobody waits for it is logged by the worker, not
        # by asyncio as "exception never retrieved".
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            # shield: a timeout must not cancel the future, so that its end stays observable
            timeout = self.settings.runtime.stage_timeout_s if self.bounded else None
            return await asyncio.wait_for(asyncio.shield(waiting), timeout=timeout)
        except TimeoutError:
            answered.set()
            if not call.done():
                self.stuck_call = call
                self.metrics.stuck_calls.labels(self.stage.stage).inc()
            raise

    def _progress_fn(
        self, event: Event, loop: asyncio.AbstractEventLoop, answered: threading.Event
    ) -> Callable[[float, str], None]:
        """A thread-safe progress reporter, at most one event a second (plus the last one)."""
        last = [0.0]

        def progress(fraction: float, message: str = "") -> None:
            if answered.is_set():  # the stage outlived its event (a timeout): nobody listens
                return
            now = time.monotonic()
            fraction = min(max(fraction, 0.0), 1.0)
            if fraction < 1.0 and now - last[0] < 1.0:
                return
            last[0] = now
            update = event.follow(
                JobProgress, stage=self.stage.stage, fraction=fraction, message=message
            )
            self._save_state(update)
            if loop.is_closed():
                return
            asyncio.run_coroutine_threadsafe(
                self._send(JOB_PROGRESS, update.job_id, encode(update)), loop
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
        attempt: int,
        *,
        permanent: bool = False,
    ) -> Outcome:
        """Answer with ``track.failed`` (and the DLQ copy). Whether it is retriable is the code's
        (``foundation.errors.RETRIABLE_CODES``), unless the failure is ``permanent``: a send the
        broker refused for good, which no replay cures."""
        name = self.stage.stage
        retriable = is_retriable(code) and not permanent
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
        await self._copy_to_dlq(raw, failure.job_id, headers)
        await self._offload(self._save_state, failure)
        answered = await self._send_failure(failure, fields)
        if not answered:
            self.metrics.unanswered.labels(name).inc()
            log.error(
                "no answer could be sent: the message stays uncommitted and is redelivered "
                "after the worker restarts",
                code=code,
            )
        return Outcome("failed", failure.job_id, failure=failure, answered=answered)

    async def _send_failure(self, failure: TrackFailed, fields: dict[str, Any]) -> bool:
        """track.failed; when it is too large for the broker (it carries the input's options,
        keys and history), a slim one with the same answer and the job id alone."""
        try:
            await self.emitter.send(TRACK_FAILED, failure.job_id, encode(failure))
            return True
        except SendError as exc:
            self._send_failed(exc)
            if not exc.too_large:
                return False
        slim = TrackFailed(
            job_id=failure.job_id, event_id=failure.event_id, options=JobOptions(), **fields
        )
        return await self._send(TRACK_FAILED, slim.job_id, encode(slim))

    async def _send(
        self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None = None
    ) -> bool:
        """Send; a failure (after the emitter's bounded retries) is counted and logged."""
        try:
            await self.emitter.send(topic, key, value, headers)
        except SendError as exc:
            self._send_failed(exc)
            return False
        return True

    def _send_failed(self, exc: SendError) -> None:
        self.metrics.send_failures.labels(self.stage.stage, exc.topic).inc()
        log.error("send failed", topic=exc.topic, error=str(exc), too_large=exc.too_large)

    async def _copy_to_dlq(self, raw: bytes | None, job_id: str, headers: dict[str, bytes]) -> None:
        """The original to ``<topic>.dlq`` (a tombstone as a tombstone), or to S3 with a
        reference there when it is too large for the broker (known from its size, or from the
        broker's refusal)."""
        topic = dlq(self.stage.consumes)
        size = len(raw or b"") + len(job_id) + sum(len(k) + len(v) for k, v in headers.items())
        if size + RECORD_OVERHEAD_BYTES <= self.settings.broker.max_message_bytes:
            try:
                await self.emitter.send(topic, job_id, raw, headers)
                return
            except SendError as exc:
                if not exc.too_large or raw is None:
                    self._send_failed(exc)
                    return
        assert raw is not None  # a tombstone always fits
        await self._claim_check(raw, job_id, headers)

    async def _claim_check(self, raw: bytes, job_id: str, headers: dict[str, bytes]) -> None:
        partition, offset = self._origin
        digest = keylayout.sha256_bytes(raw)
        key = keylayout.dlq_key(self.stage.consumes, partition, offset, digest)
        stored = await self._store_dlq_copy(key, raw)
        reference = {
            "claim_check": {"bucket": self.settings.storage.bucket, "key": key, "stored": stored},
            "bytes": len(raw),
            "sha256": digest,
            "topic": physical(self.stage.consumes, self.settings.broker.topic_prefix),
            "partition": partition,
            "offset": offset,
        }
        self.metrics.claim_checks.labels(self.stage.stage).inc()
        log.warning(
            "DLQ copy kept in S3: too large for the broker", key=key, bytes=len(raw), stored=stored
        )
        await self._send(
            dlq(self.stage.consumes),
            job_id,
            json.dumps(reference, sort_keys=True).encode(),
            {**headers, CLAIM_CHECK_HEADER: key.encode()},
        )

    async def _store_dlq_copy(self, key: str, raw: bytes) -> bool:
        for attempt in range(1, self.settings.runtime.transient_retries + 2):
            try:
                await self._offload(self.store.put_bytes, key, raw)
                return True
            except TransientStoreError as exc:
                if attempt > self.settings.runtime.transient_retries:
                    log.error("DLQ copy not stored", key=key, error=str(exc))
                    return False
                await self.sleep(
                    min(
                        self.settings.runtime.retry_backoff_s * 2 ** (attempt - 1),
                        self.settings.runtime.retry_backoff_max_s,
                    )
                )
            except Exception as exc:  # a refusal: keep the reference, say what was lost
                log.error("DLQ copy not stored", key=key, error=f"{type(exc).__name__}: {exc}")
                return False
        return False


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
