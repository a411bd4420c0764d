"""The Faust adapter: one app per stage, one agent that hands each message to the shared runner.

The app id is the consumer group: ``singtome-<stage>-v<SINGTOME_GROUP_VERSION>`` (or a name given
for a replay), so each stage scales by starting more processes of the same group, and a replay can
run beside the live group. Messages are read as raw bytes and decoded by the runner, so a
malformed event becomes ``track.failed`` instead of a crashed agent.

Delivery: the agent awaits the runner, which awaits the broker's acknowledgement of the output
event; only then does the stream take the next message, which acks the previous one for commit
(``broker_commit_every=1``). A worker killed mid-job leaves its offset uncommitted and the job is
redelivered to another worker: at-least-once, absorbed by content-addressed outputs.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View

from streams.logging import configure_logging, get_logger
from streams.metrics import Metrics
from streams.runner import Runner
from streams.settings import Settings
from streams.stage import Handler
from streams.store import S3Store
from streams.topics import STAGES, physical

log = get_logger(__name__)


def load_handler(stage: str, spec: str | None = None) -> Handler:
    """``module:function`` (default ``agents.<stage>.agent:handle``)."""
    target = spec or f"agents.{stage}.agent:handle"
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"handler must look like 'package.module:function', got {target!r}")
    handler: Handler = getattr(importlib.import_module(module_name), attr)
    return handler


def group_id(stage: str, settings: Settings, group: str | None = None) -> str:
    return group or f"{settings.topic_prefix}singtome-{stage}-v{settings.group_version}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaustEmitter:
    """Sends through the app's producer and waits for the broker's acknowledgement."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        if name not in self._topics:
            self._topics[name] = self.app.topic(
                physical(name, self.settings.topic_prefix),
                key_serializer="raw",
                value_serializer="raw",
            )
        return self._topics[name]

    async def send(
        self, topic: str, key: str, value: bytes, headers: dict[str, bytes] | None = None
    ) -> None:
        delay = self.settings.retry_backoff_s
        while True:
            try:
                pending = await self._topic(topic).send(
                    key=key.encode(), value=value, headers=headers or {}
                )
                await pending
                return
            except Exception as exc:  # the broker is away: hold the partition, never drop
                log.warning("send failed, retrying", topic=topic, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_s)


class WorkerState:
    """What /health reports."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.consuming = False
        self.draining = False
        self.job_in_hand: str | None = None
        self.jobs_done = 0


# After the grace period, how long Faust gets to commit and leave the group before a hard exit.
LEAVE_GROUP_S = 20.0


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    log.warning("exiting with a stage still running (its job is redelivered)")
    os._exit(0)


class DrainingWorker(faust.Worker):
    """On SIGTERM (or Ctrl-C): take no new message, let the job in hand finish within the grace
    period, then stop as Faust does (commit, leave the group). A job still running when the
    grace period ends is handed back uncommitted and redelivered to another worker."""

    def __init__(self, app: faust.App, state: WorkerState, grace_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.spinner = None  # a terminal spinner would put escape codes into the JSON log stream
        self.worker_state = state
        self.grace_s = grace_s

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
            # The stage's thread cannot be interrupted and would hold the exit; its message is
            # not committed, so leaving without it is safe.
            threading.Thread(target=_exit_after, args=(LEAVE_GROUP_S,), daemon=True).start()
        else:
            log.info("drained: no job in hand")
        self._schedule_shutdown(signum)


def create_app(
    stage_name: str,
    settings: Settings,
    handler_spec: str | None = None,
    group: str | None = None,
) -> tuple[faust.App, Runner, WorkerState]:
    stage = STAGES[stage_name]
    port = settings.health_port or free_port()
    credentials = None
    if settings.broker_security_protocol.startswith("SASL"):
        credentials = faust.SASLCredentials(
            username=settings.broker_sasl_username,
            password=settings.broker_sasl_password,
            mechanism=settings.broker_sasl_mechanism,
        )
    elif settings.broker_security_protocol == "SSL":
        import ssl

        credentials = faust.SSLCredentials(
            ssl.create_default_context(cafile=settings.broker_ssl_cafile)
        )
    app = faust.App(
        group_id(stage_name, settings, group),
        broker=settings.broker_url,
        broker_credentials=credentials,
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(_faust_datadir() / "{conf.name}-data"),
        # Job state lives in S3, not in Faust tables; no leader topic is needed either.
        topic_disable_leader=True,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_every=1,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_max_poll_records=1,
        stream_processing_timeout=settings.stage_timeout_s + 60,
        producer_acks=-1,
        web_enabled=True,
        web_bind=settings.health_host,
        web_port=port,
        web_host=settings.health_host,
    )
    state = WorkerState()
    metrics = Metrics()
    runner = Runner(
        stage=stage,
        handler=load_handler(stage_name, handler_spec),
        settings=settings,
        store=S3Store(settings),
        emitter=FaustEmitter(app, settings),
        metrics=metrics,
        on_busy=lambda job_id: _set_busy(state, metrics, stage_name, job_id),
    )
    source = app.topic(
        physical(stage.consumes, settings.topic_prefix),
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(source, concurrency=1, name=f"singtome.{stage_name}")
    async def process(stream: Any) -> None:
        state.consuming = True
        # Acks are ours: Faust would ack a message even when its processing is cancelled by a
        # shutdown, committing a job that never finished. Only a message whose answer (output
        # or track.failed) the broker acknowledged is acked, hence committed.
        async for event in stream.noack().events():
            if state.draining:
                # Draining: this message is not started and not acked; the group redelivers it.
                await asyncio.Event().wait()
            await runner.process(event.value, event.key)
            event.ack()
            state.jobs_done += 1

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            ready = state.consuming and not state.draining and not app.rebalancing
            body = {
                "stage": stage_name,
                "group": app.conf.id,
                "ready": ready,
                "job_in_hand": state.job_in_hand,
                "jobs_done": state.jobs_done,
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
        health=f"http://{settings.health_host}:{port}/health",
    )
    return app, runner, state


def _faust_datadir() -> Path:
    """Faust keeps a data folder per app even without tables: not in the working directory."""
    folder = Path(tempfile.gettempdir()) / "singtome-faust"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _set_busy(state: WorkerState, metrics: Metrics, stage: str, job_id: str | None) -> None:
    state.job_in_hand = job_id
    metrics.busy.labels(stage).set(1 if job_id else 0)


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


def run_worker(
    stage_name: str,
    settings: Settings,
    handler_spec: str | None = None,
    group: str | None = None,
) -> None:
    """Run one stage worker until SIGTERM/SIGINT."""
    from streams.allocator import keep_freed_memory

    keep_freed_memory()
    configure_logging(settings.log_level, settings.log_format, stage=stage_name)
    from streams.admin import create_topics

    create_topics(settings)
    app, _, state = create_app(stage_name, settings, handler_spec, group)
    worker = DrainingWorker(
        app,
        state,
        settings.shutdown_grace_s,
        loglevel=settings.log_level,
        override_logging=False,
        quiet=True,
        redirect_stdouts=False,
    )
    configure_logging(settings.log_level, settings.log_format, stage=stage_name)
    log.info("worker starting", pid=os.getpid())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    worker.execute_from_commandline()
