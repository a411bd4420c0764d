"""The Faust adapter: one app per stage, one agent that hands each message to the shared runner.

The app id is the consumer group: ``singtome-<stage>-v<SINGTOME_GROUP_VERSION>`` (or a name given
for a replay), so each stage scales by starting more processes of the same group, and a replay can
run beside the live group. Messages are read as raw bytes and decoded by the runner, so a
malformed event becomes ``track.failed`` instead of a crashed agent.

Delivery: the agent awaits the runner, which awaits the broker's acknowledgement of the output
event; only then does the stream take the next message, which acks the previous one for commit
(``broker_commit_every=1``). A worker killed mid-job leaves its offset uncommitted and the job is
redelivered to another worker: at-least-once, absorbed by content-addressed outputs.

Health: ``/health`` is 200 only while the worker holds its assignment, its topics exist, its
consumer's fetch loop goes round (or a job in hand is within its time budget) and it is neither
draining nor watching a stuck stage call (:func:`health_report`). A stage call still running
SINGTOME_STUCK_GRACE_S after its timeout makes the worker exit with :data:`EXIT_STUCK`, so that
the orchestrator restarts it. After SIGTERM every worker is gone within SINGTOME_SHUTDOWN_GRACE_S
+ SINGTOME_SHUTDOWN_LEAVE_S, whether Faust's own stop finishes or not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View

from foundation.logging import configure_logging, get_logger
from streams.admin import TopicProbe
from streams.metrics import Metrics
from streams.ports import free_port
from streams.runner import Runner, SendError
from streams.settings import Settings
from streams.stage import HandlerRef, resolve_handler
from streams.store import S3Store
from streams.topics import JOB_PROGRESS, STAGES, TRACK_FAILED, StageTopics, dlq, physical

log = get_logger(__name__)

#: exit status of a worker that left because a stage call stayed stuck past its timeout
EXIT_STUCK = 70


def group_id(stage: str, settings: Settings, group: str | None = None) -> str:
    broker = settings.broker
    return group or f"{broker.topic_prefix}singtome-{stage}-v{broker.group_version}"


class FaustEmitter:
    """Sends through the app's producer and waits for the broker's acknowledgement."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        if name not in self._topics:
            self._topics[name] = self.app.topic(
                physical(name, self.settings.broker.topic_prefix),
                key_serializer="raw",
                value_serializer="raw",
            )
        return self._topics[name]

    async def send(
        self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None = None
    ) -> None:
        """Send and wait for the acknowledgement: each attempt bounded by SINGTOME_SEND_TIMEOUT_S,
        SINGTOME_SEND_RETRIES retries with backoff (a broker restart is ridden out), and a
        refusal that no retry can change (too large, unknown topic) raised at once."""
        from aiokafka.errors import (
            KafkaError,
            MessageSizeTooLargeError,
            RecordListTooLargeError,
            RecordTooLargeError,
        )

        delay = self.settings.runtime.retry_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                # aiokafka gives up on metadata and expires a batch after the request timeout
                # (SINGTOME_SEND_TIMEOUT_S); the outer bound holds whatever else might wait
                await asyncio.wait_for(
                    self._send_once(topic, key, value, headers),
                    self.settings.broker.send_timeout_s + 5,
                )
                return
            except (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError) as e:
                raise SendError(topic, f"{type(e).__name__}: {e}", too_large=True) from e
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                permanent = isinstance(exc, KafkaError) and not _retriable(exc)
                if permanent or attempt > self.settings.broker.send_retries:
                    raise SendError(
                        topic, f"{type(exc).__name__}: {exc}", permanent=permanent
                    ) from exc
                log.warning(
                    "send failed, retrying",
                    topic=topic,
                    error=f"{type(exc).__name__}: {exc}",
                    attempt=attempt,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.runtime.retry_backoff_max_s)

    async def _send_once(
        self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None
    ) -> None:
        pending = await self._topic(topic).send(
            key=key.encode(), value=value, headers=headers or {}
        )
        await pending


def _retriable(exc: Exception) -> bool:
    """aiokafka marks errors a retry may cure; a timeout or a lost connection is one too."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    return bool(getattr(exc, "retriable", False)) or isinstance(
        exc, KafkaTimeoutError | KafkaConnectionError
    )


@dataclass
class WorkerState:
    """What /health reports: the worker's own view, updated by the agent, the consumer's fetch
    loop, the rebalance callbacks and the topic check."""

    started: float = field(default_factory=time.monotonic)
    agent_running: bool = False
    agent_crashes: int = 0
    draining: bool = False
    assigned: bool = False
    partitions: list[str] = field(default_factory=list)
    last_fetch: float | None = None
    topics_checked_at: float | None = None
    missing_topics: list[str] = field(default_factory=list)
    topic_error: str | None = None
    job_in_hand: str | None = None
    job_started: float | None = None
    jobs_done: int = 0
    unanswered: int = 0
    stuck_since: float | None = None
    exit_code: int = 0
    #: set by the worker process: stop (commit, leave the group) and exit with this status
    request_exit: Callable[[int], None] | None = None


def job_budget_s(settings: Settings) -> float:
    """The longest a healthy worker holds one message: every stage attempt to its timeout with
    backoff between, and three sends (DLQ copy, state, answer) through every retry."""
    runtime, broker = settings.runtime, settings.broker
    attempts = runtime.transient_retries + 1
    stage = attempts * (runtime.stage_timeout_s + runtime.retry_backoff_max_s)
    per_send = broker.send_timeout_s + 5 + runtime.retry_backoff_max_s
    send = (broker.send_retries + 1) * per_send
    return stage + 3 * send + 60


def health_report(
    state: WorkerState, settings: Settings, now: float, rebalancing: bool = False
) -> tuple[bool, list[str]]:
    """(ready, problems): ready only when nothing in the list is wrong."""
    runtime = settings.runtime
    problems: list[str] = []
    if state.draining:
        problems.append("draining")
    if not state.agent_running:
        crashed = f" (crashed {state.agent_crashes} times)" if state.agent_crashes else ""
        problems.append("the agent is not running" + crashed)
    if state.stuck_since is not None:
        problems.append(
            f"a stage call has run {now - state.stuck_since:.0f} s past its timeout and is still "
            f"running; the worker exits after SINGTOME_STUCK_GRACE_S={runtime.stuck_grace_s:g}"
        )
    if rebalancing or not state.assigned:
        problems.append("no partition assignment: joining the group or rebalancing")
    if state.topic_error is not None:
        problems.append(f"the broker could not be asked for the topics: {state.topic_error}")
    elif state.missing_topics:
        problems.append(f"topics missing on the broker: {', '.join(state.missing_topics)}")
    if state.topics_checked_at is None or now - state.topics_checked_at > runtime.health_stale_s:
        problems.append("the topics have not been confirmed recently")
    if state.job_started is not None:
        held = now - state.job_started
        if held > job_budget_s(settings):
            problems.append(f"wedged: one message in hand for {held:.0f} s")
    elif state.last_fetch is None or now - state.last_fetch > runtime.health_stale_s:
        problems.append("the consumer's fetch loop has stalled")
    if state.unanswered:
        problems.append(
            f"{state.unanswered} message(s) could not be answered and stay uncommitted: "
            "restart the worker to have them redelivered"
        )
    return not problems, problems


def _exit_after(seconds: float, code: int, why: str) -> None:
    """A hard exit, whatever Faust's stop is waiting for (a stuck stage thread, a broker that
    is away or has forgotten the group)."""

    def run() -> None:
        time.sleep(seconds)
        log.warning("exiting without a clean stop", reason=why, exit_code=code)
        _flush()
        os._exit(code)

    threading.Thread(target=run, name="singtome-exit", daemon=True).start()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class DrainingWorker(faust.Worker):
    """On SIGTERM (or Ctrl-C): take no new message, let the job in hand finish within the grace
    period, then stop as Faust does (commit, leave the group). A job still running when the
    grace period ends is handed back uncommitted and redelivered to another worker."""

    def __init__(
        self,
        app: faust.App,
        state: WorkerState,
        grace_s: float,
        leave_s: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.spinner = None  # a terminal spinner would put escape codes into the JSON log stream
        self.worker_state = state
        self.grace_s = grace_s
        self.leave_s = leave_s
        state.request_exit = self.stop_and_exit

    def _on_sigterm(self) -> None:
        self._drain(signal.SIGTERM)

    def _on_sigint(self) -> None:
        if self.worker_state.draining:  # a second Ctrl-C: stop now
            self._schedule_shutdown(signal.SIGINT)
        else:
            self._drain(signal.SIGINT)

    def _drain(self, signum: signal.Signals) -> None:
        if self.worker_state.draining:
            return
        self.worker_state.draining = True
        log.info(
            "draining",
            signal=signum.name,
            job_in_hand=self.worker_state.job_in_hand,
            grace_s=self.grace_s,
        )
        self.add_future(self._stop_when_idle(signum))

    async def _stop_when_idle(self, signum: signal.Signals) -> None:
        deadline = time.monotonic() + self.grace_s
        while self.worker_state.job_in_hand and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.worker_state.job_in_hand:
            log.warning(
                "grace period over: the job in hand is handed back uncommitted",
                job_id=self.worker_state.job_in_hand,
            )
        else:
            log.info("drained: no job in hand")
        # Faust's stop (commit, leave the group) may wait on a broker that is away or has
        # forgotten the group, and a stage thread cannot be interrupted: the process is gone
        # leave_s from now in any case. An unfinished message is not committed: leaving is safe.
        _exit_after(self.leave_s, 0, "the stop did not finish within SINGTOME_SHUTDOWN_LEAVE_S")
        self._schedule_shutdown(signum)

    def stop_and_exit(self, code: int) -> None:
        """Stop as on SIGTERM, now (no job is in hand), then exit with ``code``."""
        self.worker_state.exit_code = code
        self.worker_state.draining = True
        _exit_after(self.leave_s, code, "the stop did not finish within SINGTOME_SHUTDOWN_LEAVE_S")
        self._schedule_shutdown(signal.SIGTERM)


def create_app(
    stage_name: str,
    settings: Settings,
    handler: HandlerRef,
    group: str | None = None,
    device: str | None = None,
) -> tuple[faust.App, Runner, WorkerState]:
    """The Faust app of one stage. ``handler`` comes from the caller (the CLI takes it from the
    stage registry, ``agents/registry.py``): the runtime knows no stage's code."""
    stage = STAGES[stage_name]
    broker, runtime = settings.broker, settings.runtime
    port = runtime.health_port or free_port()
    credentials = None
    if broker.security_protocol.startswith("SASL"):
        credentials = faust.SASLCredentials(
            username=broker.sasl_username,
            password=broker.sasl_password,
            mechanism=broker.sasl_mechanism,
        )
    elif broker.security_protocol == "SSL":
        import ssl

        credentials = faust.SSLCredentials(ssl.create_default_context(cafile=broker.ssl_cafile))
    app = faust.App(
        group_id(stage_name, settings, group),
        broker=broker.url,
        broker_credentials=credentials,
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(_faust_datadir() / "{conf.name}-data"),
        # Job state lives in S3, not in Faust tables; no leader topic is needed either.
        topic_disable_leader=True,
        topic_partitions=broker.topic_partitions,
        topic_replication_factor=broker.topic_replication,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_every=1,
        broker_commit_interval=1.0,
        broker_session_timeout=broker.session_timeout_s,
        broker_heartbeat_interval=broker.heartbeat_interval_s,
        broker_rebalance_timeout=broker.rebalance_timeout_s,
        broker_max_poll_interval=broker.max_poll_interval_s,
        broker_max_poll_records=1,
        stream_processing_timeout=runtime.stage_timeout_s + 60,
        producer_acks=-1,
        # one size limit for the producer and the topics (streams.admin.topic_configs)
        producer_max_request_size=broker.max_message_bytes,
        producer_request_timeout=broker.send_timeout_s,
        web_enabled=True,
        web_bind=runtime.health_host,
        web_port=port,
        web_host=runtime.health_host,
    )
    state = WorkerState()
    _watch_fetch_loop(app, state)
    metrics = Metrics()
    if device is not None:
        metrics.device.labels(stage_name, device).set(1)
    runner = Runner(
        stage=stage,
        handler=resolve_handler(handler),
        settings=settings,
        store=S3Store(settings),
        emitter=FaustEmitter(app, settings),
        metrics=metrics,
        on_busy=lambda job_id: _set_busy(state, metrics, stage_name, job_id),
    )
    source = app.topic(
        physical(stage.consumes, settings.broker.topic_prefix),
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(source, concurrency=1, name=f"singtome.{stage_name}")
    async def process(stream: Any) -> None:
        state.agent_running = True
        try:
            # Acks are ours: Faust would ack a message even when its processing is cancelled by
            # a shutdown, committing a job that never finished. Only a message whose answer
            # (output or track.failed) the broker acknowledged is acked, hence committed.
            async for event in stream.noack().events():
                if state.draining:
                    # Draining: this message is not started and not acked; it is redelivered.
                    await asyncio.Event().wait()
                message = event.message
                outcome = await runner.process(
                    event.value, event.key, partition=message.partition, offset=message.offset
                )
                if outcome.answered:
                    event.ack()
                else:
                    state.unanswered += 1  # left uncommitted: redelivered after a restart
                state.jobs_done += 1
                if runner.stuck_call is not None:
                    await _outwait_stuck_call(app, runner, state, settings)
        except asyncio.CancelledError:
            raise
        except BaseException:
            state.agent_crashes += 1
            log.exception("agent crashed")
            raise
        finally:
            state.agent_running = False

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        state.assigned = True
        state.partitions = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        state.assigned = False

    wanted = _health_topics(stage, settings)

    @app.task
    async def watch_topics() -> None:
        probe = TopicProbe(settings, wanted)
        try:
            while not app.should_stop:
                try:
                    state.missing_topics = await probe.missing()
                    state.topic_error = None
                    state.topics_checked_at = time.monotonic()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    state.topic_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(settings.runtime.health_check_interval_s)
        finally:
            await probe.close()

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            ready, problems = health_report(
                state, settings, time.monotonic(), rebalancing=bool(app.rebalancing)
            )
            body = {
                "stage": stage_name,
                "group": app.conf.id,
                "ready": ready,
                "problems": problems,
                "partitions": state.partitions,
                "job_in_hand": state.job_in_hand,
                "jobs_done": state.jobs_done,
                "unanswered": state.unanswered,
                "uptime_s": round(time.monotonic() - state.started, 1),
            }
            return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            _update_lag(app, metrics, stage_name)
            return self.bytes(
                generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0]
            )

    log.info(
        "worker configured",
        group=app.conf.id,
        consumes=stage.consumes,
        produces=stage.produces,
        health=f"http://{settings.runtime.health_host}:{port}/health",
    )
    return app, runner, state


def _faust_datadir() -> Path:
    """Faust keeps a data folder per app even without tables: not in the working directory."""
    folder = Path(tempfile.gettempdir()) / "singtome-faust"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _set_busy(state: WorkerState, metrics: Metrics, stage: str, job_id: str | None) -> None:
    state.job_in_hand = job_id
    state.job_started = time.monotonic() if job_id else None
    metrics.busy.labels(stage).set(1 if job_id else 0)


def _health_topics(stage: StageTopics, settings: Settings) -> list[str]:
    """The topics a stage worker reads or writes: all must exist for it to be healthy."""
    names = [stage.consumes, stage.produces, TRACK_FAILED, JOB_PROGRESS, dlq(stage.consumes)]
    return [physical(name, settings.broker.topic_prefix) for name in names]


def _watch_fetch_loop(app: faust.App, state: WorkerState) -> None:
    """Stamp each round of the consumer's fetch loop (about once a second, idle or not): the
    "last loop iteration" /health looks at. Faust builds its consumer from the transport's
    Consumer class when the worker starts, so a subclass set here is the one that runs."""
    base = app.transport.Consumer

    class FetchWatchingConsumer(base):  # type: ignore[misc,valid-type]
        async def getmany(self, timeout: float) -> Any:
            state.last_fetch = time.monotonic()
            async for item in super().getmany(timeout):
                yield item

    app.transport.Consumer = FetchWatchingConsumer


async def _outwait_stuck_call(
    app: faust.App, runner: Runner, state: WorkerState, settings: Settings
) -> None:
    """A stage call outlived its timeout (its job is answered already): take no new message
    while it runs; if it is still running after SINGTOME_STUCK_GRACE_S, commit and exit with
    EXIT_STUCK so that the orchestrator restarts the worker."""
    call: concurrent.futures.Future[Any] | None = runner.stuck_call
    if call is None:
        return
    state.stuck_since = time.monotonic()
    log.error(
        "a stage call is still running past its timeout", grace_s=settings.runtime.stuck_grace_s
    )
    deadline = state.stuck_since + settings.runtime.stuck_grace_s
    while not call.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    if call.done():
        runner.stuck_call = None
        state.stuck_since = None
        log.warning("the stage call past its timeout has ended; consuming again")
        return
    log.error(
        "a stage call is still running after the grace period: exiting to be restarted",
        exit_code=EXIT_STUCK,
    )
    # The timed-out job was answered and acked: commit it now, so that the restarted worker
    # does not take it (and get stuck on it) again.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(app.consumer.commit(), timeout=10)
    if state.request_exit is not None:
        state.request_exit(EXIT_STUCK)
    else:  # no worker process around the app (a test): nothing to stop but the process
        _exit_after(0, EXIT_STUCK, "stuck stage call")
    await asyncio.Event().wait()  # the stop cancels this agent


def _update_lag(app: faust.App, metrics: Metrics, stage: str) -> None:
    """Highwater minus committed position per assigned partition, where the consumer knows it."""
    try:
        consumer = app.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = (
                app.consumer._committed_offset.get(tp)
                if hasattr(app.consumer, "_committed_offset")
                else None
            )
            if highwater is not None and position is not None:
                metrics.consumer_lag.labels(stage, tp.topic, str(tp.partition)).set(
                    max(highwater - position - 1, 0)
                )
    except Exception:  # lag is best effort: a metric must never break the page
        return


def worker_device(settings: Settings, uses_device: bool) -> str:
    """The device this stage's work runs on (the CPU for a stage that uses none), chosen once at
    start and logged. A configured GPU that is not usable raises
    :class:`foundation.device.DeviceUnavailable`: the worker does not start rather than run on the
    CPU unannounced."""
    from foundation.device import DeviceUnavailable, resolve_device

    if not uses_device:
        return "cpu"
    try:
        device = str(resolve_device(settings.models.device, probe=True))
    except DeviceUnavailable as exc:
        log.error(
            "the configured device is not usable", device=settings.models.device, error=str(exc)
        )
        raise
    log.info("device chosen", device=device, configured=settings.models.device)
    return device


def run_worker(
    stage_name: str,
    settings: Settings,
    handler: HandlerRef,
    group: str | None = None,
    *,
    uses_device: bool,
) -> None:
    """Run one stage worker until SIGTERM/SIGINT. A ``package.module:function`` handler is
    imported once the device is chosen and the topics exist, as the app is built; ``uses_device``
    (from the stage registry) says whether the stage's work runs on the configured device."""
    from streams.allocator import keep_freed_memory

    keep_freed_memory()
    configure_logging(settings.runtime.log_level, settings.runtime.log_format, stage=stage_name)
    from streams.admin import create_topics

    device = worker_device(settings, uses_device)
    create_topics(settings)
    app, _, state = create_app(stage_name, settings, handler, group, device=device)
    worker = DrainingWorker(
        app,
        state,
        settings.runtime.shutdown_grace_s,
        settings.runtime.shutdown_leave_s,
        loglevel=settings.runtime.log_level,
        override_logging=False,
        quiet=True,
        redirect_stdouts=False,
    )
    configure_logging(settings.runtime.log_level, settings.runtime.log_format, stage=stage_name)
    log.info("worker starting", pid=os.getpid())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code: Any = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        log.exception("worker crashed")
        code = 1
    code = state.exit_code or (code if isinstance(code, int) else 1)
    log.info("worker stopped", exit_code=code)
    _flush()
    # A stage thread that is still running (handed back, or stuck) would hold a normal exit
    # until it ends; Faust has committed and left the group, so nothing is left to wait for.
    os._exit(code)
