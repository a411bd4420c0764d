"""Helpers for integration tests and benchmarks: the real local stack, worker processes, and a
reader of topics. Everything started here is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontends.stack import StackConfig, down, up
from schemas.events import BY_TOPIC, Event, JobOptions, ObjectKeys, SongUploaded, VoiceOptions
from streams.admin import create_topics
from streams.ports import free_port
from streams.settings import CACHE_HOME, BrokerKind, Settings
from streams.store import S3Store
from streams.topics import physical

ROOT = Path(__file__).resolve().parent.parent
SINGTOME = str(Path(sys.executable).with_name("singtome"))


# Several checkouts may run their tests on one machine at once: SINGTOME_TEST_PORT_OFFSET moves
# every test port (and the fixed stack folder) so their stacks stay apart. Keep it a multiple of
# 100 below 1000: SeaweedFS also listens at S3 port +1000..+1003 and +10000.
PORT_OFFSET = int(os.environ.get("SINGTOME_TEST_PORT_OFFSET", "0"))
TEST_STACK_ROOT = CACHE_HOME / ("test-stack" + (f"-{PORT_OFFSET}" if PORT_OFFSET else ""))


def stack_port(name: str, default: int) -> int:
    """A test port: ``SINGTOME_TEST_<NAME>_PORT`` when set, else the default moved by the offset."""
    return int(os.environ.get(f"SINGTOME_TEST_{name}_PORT", default + PORT_OFFSET))


@contextlib.contextmanager
def local_stack(
    root: Path = TEST_STACK_ROOT, broker: BrokerKind = "kafka"
) -> Iterator[StackConfig]:
    """The real broker (Apache Kafka unless told) + S3 server on test ports (env
    SINGTOME_TEST_KAFKA_PORT / _S3_PORT).

    The folder is fixed, so a run that was killed leaves PID files the next run uses to stop
    what it left behind; its data is wiped for a clean start.
    """
    cfg = StackConfig(
        root=root,
        kafka_port=stack_port("KAFKA", 29092),
        s3_port=stack_port("S3", 28333),
        bucket="singtome-test",
        broker=broker,
    )
    down(cfg)
    shutil.rmtree(root, ignore_errors=True)
    up(cfg)
    try:
        yield cfg
    finally:
        down(cfg)


@dataclass
class Pipeline:
    """One isolated pipeline on the shared stack: its own topic prefix, so its own topics and
    consumer groups."""

    stack: StackConfig
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: Path = field(default_factory=lambda: Path(os.environ.get("TMPDIR", "/tmp")))
    #: topics (plain names) created with a larger max.message.bytes than the settings say
    topic_max_bytes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            **self.stack.env(),
            "SINGTOME_TOPIC_PREFIX": self.prefix,
            "SINGTOME_RETRY_BACKOFF_S": "0.2",
            # Detect a killed worker in seconds, not the production 45 s (the guarantees do not
            # depend on it, only how long the kill -9 tests wait).
            "SINGTOME_SESSION_TIMEOUT_S": "10",
            "SINGTOME_HEARTBEAT_INTERVAL_S": "1",
            "SINGTOME_REBALANCE_TIMEOUT_S": "20",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = Settings(
            broker={"url": self.stack.broker_url, "topic_prefix": self.prefix},
            storage={"bucket": self.stack.bucket},
        )
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ[key] = self.env[key]
        self.store = S3Store(self.settings)
        for topic, limit in self.topic_max_bytes.items():
            raised = self.settings.updated(broker={"max_message_bytes": limit})
            create_topics(raised, [topic])
        create_topics(self.settings)

    def start_worker(
        self,
        stage: str,
        handler: str | None = None,
        group: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        argv = [SINGTOME, "worker", stage]
        if handler:
            argv += ["--handler", handler]
        if group:
            argv += ["--group", group]
        log_path = self.logs / f"{self.prefix}{stage}-{port}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                argv,
                env={**self.env, "SINGTOME_HEALTH_PORT": str(port), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc, port)
        return proc, port

    def wait_ready(self, proc: subprocess.Popen[bytes], port: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {proc.log_path.read_text()[-3000:]}")  # type: ignore[attr-defined]
            if health(port).get("ready"):
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready: {proc.log_path.read_text()[-3000:]}")  # type: ignore[attr-defined]

    def start_test_workers(self, env: dict[str, str] | None = None) -> dict[str, int]:
        """One worker per stage with the copy-and-tag test handlers; returns health ports."""
        started = {
            stage: self.start_worker(stage, f"tests.stages:{stage}", env=env, wait=False)
            for stage in ("separator", "trainer", "converter", "mixer")
        }
        for proc, port in started.values():
            self.wait_ready(proc, port)
        return {stage: port for stage, (_, port) in started.items()}

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def topic(self, name: str) -> str:
        return physical(name, self.prefix)

    def read(
        self, topic: str, until: int, timeout_s: float = 60
    ) -> list[tuple[dict[str, bytes], bytes]]:
        """Every message of a topic from the beginning, once at least ``until`` are there."""
        return asyncio.run(read_topic(self.settings, self.topic(topic), until, timeout_s))

    def records(self, topic: str, until: int, timeout_s: float = 60) -> list[Any]:
        """Like :meth:`read`, as aiokafka records (timestamp, partition, offset, headers)."""
        return asyncio.run(read_records(self.settings, self.topic(topic), until, timeout_s))

    def events(self, topic: str, until: int, timeout_s: float = 60) -> list[Event]:
        cls = BY_TOPIC[topic]
        return [cls.model_validate_json(v) for _, v in self.read(topic, until, timeout_s)]

    def by_job(self, topic: str, job_ids: set[str], timeout_s: float = 300) -> dict[str, Event]:
        """The last event of ``topic`` for each of ``job_ids``, waiting until all are there."""
        import time as _time

        deadline = _time.monotonic() + timeout_s
        found: dict[str, Event] = {}
        while True:
            found = {e.job_id: e for e in self.events(topic, until=0, timeout_s=2)}
            if job_ids <= set(found) or _time.monotonic() > deadline:
                break
            _time.sleep(1)
        missing = job_ids - set(found)
        assert not missing, f"no {topic} for {sorted(missing)} within {timeout_s:.0f} s"
        return {job: found[job] for job in job_ids}

    def songs(self, tag: str, n: int) -> list[SongUploaded]:
        """Upload n small 'songs' (``song <job_id>``) and return their song.uploaded events."""
        events = []
        for i in range(n):
            job_id = f"{tag}-{i:04d}"
            key = f"uploads/{job_id}/song.wav"
            self.store.put_bytes(key, f"song {job_id}".encode())
            voice = VoiceOptions(
                dataset_key=f"uploads/{job_id}/voice/"
            )  # the test stages ignore it
            events.append(
                SongUploaded(
                    job_id=job_id, keys=ObjectKeys(song=key), options=JobOptions(voice=voice)
                )
            )
        return events

    def count(self, prefix: str) -> int:
        return sum(1 for _ in self.store.list(prefix))


class TcpProxy:
    """A TCP forwarder to a local server that a test can cut and restore: an outage of that
    server as its clients see it, while others (the broker's own storage in S3) keep it.

    Cut, it closes its connections and its listening socket, so clients get "connection
    refused", as from a stopped server; restored, it listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown first: a bare close() does not wake the thread blocked in accept(),
            # which would go on taking connections
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets -= {source, sink}


def wait_job_in_hand(port: int, timeout_s: float = 60) -> str:
    """Wait until the worker on ``port`` holds a job; returns its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = health(port).get("job_in_hand")
        if job:
            return str(job)
        time.sleep(0.05)
    raise AssertionError("the worker never took a job")


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


async def read_topic(
    settings: Settings, topic: str, until: int, timeout_s: float
) -> list[tuple[dict[str, bytes], bytes]]:
    """(headers, value) of every message of a topic, once at least ``until`` are there."""
    records = await read_records(settings, topic, until, timeout_s)
    return [(dict(record.headers or ()), record.value) for record in records]


async def read_records(settings: Settings, topic: str, until: int, timeout_s: float) -> list[Any]:
    """Every record (key, value, headers, timestamp...) of a topic: read with manual assignment
    from offset 0 up to the end offsets the broker reports (ListOffsets, ``end_offsets()``),
    once at least ``until`` messages are there."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.admin import kafka_client_kwargs
    from streams.client import partitions_of

    partitions = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
    consumer = AIOKafkaConsumer(
        **kafka_client_kwargs(settings),
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,  # the tests' oversized events
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        if partitions:
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if partitions:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    messages.extend(records)
            ends = await consumer.end_offsets(partitions) if partitions else {}
            caught_up = True
            for tp in partitions:
                if await consumer.position(tp) < ends[tp]:
                    caught_up = False
            if len(messages) >= until and caught_up:
                break
            if not partitions:
                await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
    return messages
