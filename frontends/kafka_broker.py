"""Apache Kafka for the local stack: one JVM in KRaft combined mode (broker + controller, no
ZooKeeper), run from the official jars on Maven Central.

- :func:`install` (scripts/setup.sh runs ``python -m frontends.kafka_broker install``) has Maven
  copy the runtime jars named in ``scripts/kafka/pom.xml`` into ``<kafka_dir>/<version>/libs``,
  outside the clone like the virtual environment, and records a class-data-sharing archive of one
  broker start beside them (it halves the JVM's start time on two shared cores). Idempotent.
- :func:`start` formats the log folder under the stack's data dir once (so topics, offsets and
  consumer groups survive restarts), writes the broker's configuration and waits until its admin
  API answers. The stack module (frontends/stack.py) picks this or tansu by ``StackConfig.broker``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foundation.logging import get_logger
from streams.ports import free_port

if TYPE_CHECKING:
    from frontends.stack import StackConfig

log = get_logger(__name__)

POM = Path(__file__).resolve().parents[1] / "scripts" / "kafka" / "pom.xml"

# Small heap and cheap JIT for a laptop or a 2-core CI machine shared with the workers: the serial
# collector (no GC threads), C1 only (compiles fast, spends less CPU warming up), and the class
# archive when install() made one. KAFKA_HEAP_OPTS replaces the heap flags, as in Kafka's scripts.
HEAP_OPTS = ["-Xms64m", "-Xmx384m"]
JVM_OPTS = [
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]

NODE_ID = 1
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0  # a controlled shutdown flushes and closes every partition

# Broker settings for one local node. What differs from Kafka's defaults, and why:
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={node_id}@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
# One node: every internal topic has one replica, and few partitions (each costs files and memory).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# The first rebalance of a group does not wait 3 s for more members (a local stack, a test).
group.initial.rebalance.delay.ms=0
# Topics come from `singtome topics create`, as in production: a misspelt topic is an error,
# not a new topic.
auto.create.topics.enable=false
num.partitions=4
# Two shared cores.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaError(RuntimeError):
    pass


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version the pom names (``<kafka.version>``): the one place it is declared."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    found = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if found is None or not (found.text or "").strip():
        raise KafkaError(f"{pom} names no <kafka.version>")
    return (found.text or "").strip()


@dataclass(frozen=True)
class Installation:
    """Apache Kafka's jars for one version, under ``<kafka_dir>/<version>``."""

    home: Path
    version: str

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def archive(self) -> Path:
        return self.home / "classes.jsa"

    @property
    def installed(self) -> bool:
        return (self.libs / ".complete").exists()

    def classpath(self) -> str:
        # An explicit, sorted list (not libs/*): the class archive is valid only for the same
        # class path in the same order.
        return os.pathsep.join(sorted(str(jar) for jar in self.libs.glob("*.jar")))

    def describe(self) -> dict[str, str]:
        return {
            "kind": "kafka",
            "version": self.version,
            "name": f"Apache Kafka {self.version} (KRaft, single node)",
        }


def installation(kafka_dir: Path) -> Installation:
    version = kafka_version()
    return Installation(home=kafka_dir / version, version=version)


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    found = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not found:
        raise KafkaError(
            "java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
        )
    return found


def install(kafka_dir: Path) -> Installation:
    """Fetch the jars with Maven (once per version) and build the class archive. Idempotent."""
    inst = installation(kafka_dir)
    if not inst.installed:
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaError("mvn not found: install Maven (apt-get install maven)")
        inst.home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=inst.home))
        try:
            subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-Dstyle.color=never",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging}",
                ],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            (staging / ".complete").write_text(inst.version + "\n")
            shutil.rmtree(inst.libs, ignore_errors=True)
            staging.chmod(0o755)
            os.replace(staging, inst.libs)  # a half-fetched folder never counts as installed
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("kafka jars installed", version=inst.version, libs=str(inst.libs))
    if not inst.archive.exists():
        build_archive(inst)
    return inst


def build_archive(inst: Installation) -> None:
    """Start a throwaway broker once with ``-XX:ArchiveClassesAtExit``: the JVM records the
    classes it loaded, and later starts map them instead of parsing ~40 MB of jars again."""
    with tempfile.TemporaryDirectory(prefix="singtome-kafka-archive-") as tmp:
        root = Path(tmp)
        staging = inst.home / f"classes.jsa.tmp-{os.getpid()}"
        port, controller_port = free_port(), free_port()
        props = _prepare(inst, root, port, controller_port)
        argv = [
            *_java(inst, root, f"-XX:ArchiveClassesAtExit={staging}"),
            "kafka.Kafka",
            str(props),
        ]
        with open(root / "broker.log", "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(port, lambda: proc.poll() is None, root / "broker.log")
            _create_probe_topic(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        if staging.exists() and staging.stat().st_size > 0:
            os.replace(staging, inst.archive)
            log.info("kafka class archive built", archive=str(inst.archive))
        else:
            log.warning("the JVM wrote no class archive; Kafka starts without one")


def _create_probe_topic(port: int) -> None:
    """Load the classes of topic creation too, so they are in the archive."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            await admin.create_topics([NewTopic("probe", 4, 1)])
        finally:
            await admin.close()

    asyncio.run(create())


def _write_config(root: Path, port: int, controller_port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    props = root / "server.properties"
    props.write_text(
        SERVER_PROPERTIES.format(
            node_id=NODE_ID,
            port=port,
            controller_port=controller_port,
            log_dir=root / "data",
        )
    )
    (root / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
    return props


def _prepare(inst: Installation, root: Path, port: int, controller_port: int) -> Path:
    """Write the configuration and format the log folder once (a folder with meta.properties is
    kept as it is: topics, offsets and groups survive restarts). Returns the properties file."""
    if not inst.installed:
        raise KafkaError(
            f"Apache Kafka {inst.version} is not installed in {inst.home}: run scripts/setup.sh "
            f"(or {sys.executable} -m frontends.kafka_broker install)"
        )
    props = _write_config(root, port, controller_port)
    if (root / "data" / "meta.properties").exists():
        return props
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    result = subprocess.run(
        [
            *_java(inst, root),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(props),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise KafkaError(
            f"formatting {root / 'data'} failed:\n{(result.stdout + result.stderr)[-2000:]}"
        )
    return props


def _java(inst: Installation, root: Path, *extra: str) -> list[str]:
    heap = os.environ.get("KAFKA_HEAP_OPTS", "").split() or HEAP_OPTS
    archive = [f"-XX:SharedArchiveFile={inst.archive}"] if inst.archive.exists() else []
    return [
        java_binary(),
        *heap,
        *JVM_OPTS,
        *archive,
        *extra,
        f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
        "-cp",
        inst.classpath(),
    ]


def admin_answers(port: int, timeout_s: float = 5.0) -> bool:
    """Whether the broker's admin API answers DescribeCluster with itself as a live broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=int(timeout_s * 1000)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            return bool(cluster.get("brokers"))
        except Exception:  # not up yet: any failure means "not ready"
            return False
        finally:
            await admin.close()

    return asyncio.run(ask())


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_ready(port: int, alive: object, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive():  # type: ignore[operator]
            break
        # The listener opens only once the broker is unfenced; then ask the admin API.
        if _port_open(port) and admin_answers(port):
            return
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    state = "exited" if not alive() else f"did not answer in {START_TIMEOUT_S:.0f} s"  # type: ignore[operator]
    raise KafkaError(f"Apache Kafka {state}; log tail:\n{tail}")


def start(cfg: StackConfig, kafka_dir: Path, wait: bool = True) -> None:
    """Start the stack's broker unless it runs, then (``wait``) wait until its admin API answers.

    ``wait=False`` only launches it, so the stack can start S3 meanwhile; a later call waits."""
    from frontends.stack import StackError, _pidfile, _port_open, _read_pid, _spawn

    inst = installation(kafka_dir)
    pid = _read_pid(cfg, "broker")
    if pid is None:
        for port in (cfg.kafka_port, cfg.controller_port):
            if _port_open(port):
                raise StackError(
                    f"port {port} is taken by another program; set SINGTOME_KAFKA_PORT"
                )
        root = cfg.root / "kafka"
        try:
            props = _prepare(inst, root, cfg.kafka_port, cfg.controller_port)
        except KafkaError as exc:
            raise StackError(str(exc)) from None
        pid = _spawn(cfg, "broker", [*_java(inst, root), "kafka.Kafka", str(props)])
        (cfg.root / "broker.started").write_text(str(time.time()))
    if not wait:
        return
    try:
        _wait_ready(
            cfg.kafka_port, lambda: _read_pid(cfg, "broker") == pid, cfg.root / "broker.log"
        )
    except KafkaError as exc:
        _pidfile(cfg, "broker").unlink(missing_ok=True)
        raise StackError(str(exc)) from None
    try:
        start_s = round(time.time() - float((cfg.root / "broker.started").read_text()), 1)
    except (OSError, ValueError):
        start_s = None
    log.info("kafka ready", version=inst.version, start_s=start_s)


def main(argv: list[str]) -> int:
    from streams.settings import get_settings

    if argv[1:] == ["install"]:
        inst = install(get_settings().stack.kafka_dir)
        sys.stdout.write(json.dumps({**inst.describe(), "home": str(inst.home)}) + "\n")
        return 0
    sys.stderr.write("usage: python -m frontends.kafka_broker install\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
