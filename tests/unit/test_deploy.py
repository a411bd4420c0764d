"""The deployment artefacts (deploy/, .dockerignore) kept in step with the code.

Kubernetes manifests are checked against the Kubernetes JSON schemas that kubernetes-validate
ships (strict: an unknown field is an error) and the compose file against the compose-spec schema
that check-jsonschema ships, both offline. Stage, topic and consumer-group names are derived from
``streams.topics.STAGES`` and ``streams.worker.group_id``, environment variable names from
``streams.settings.Settings``, commands from the real CLI, so none of them can drift unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from operator import attrgetter
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from typer.testing import CliRunner

from frontends.cli import app
from streams.admin import bootstrap_servers
from streams.settings import PULLED_DEFAULTS, Settings, variables
from streams.topics import STAGES, physical
from streams.worker import group_id

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SAGEMAKER_ENTRY = DEPLOY / "docker" / "sagemaker_train.py"
OPERATIONS = REPO / "docs" / "operations.md"

# The oldest Kubernetes minor the manifests are written for, and the newest schema shipped.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
# Kinds from operators (no schema in kubernetes-validate); checked structurally below.
CRD_KINDS = {"ScaledObject"}
# The stages whose work belongs on a GPU; the mixer is CPU-only by design.
GPU_STAGES = {"separator", "trainer", "converter"}
# Environment variables a manifest may set that are not singtome settings.
FOREIGN_ENV = {
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
}
SETTING_PREFIX = str(Settings.model_config.get("env_prefix", "")).upper()
SETTING_NAMES = {
    name for v in variables(Settings) for name in v.names if name.startswith(SETTING_PREFIX)
}

runner = CliRunner()


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) for doc in yaml_docs(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deployment(stage: str) -> dict[str, Any]:
    return one("Deployment", f"singtome-{stage}")


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap_env() -> dict[str, str]:
    return {k: str(v) for k, v in one("ConfigMap", "singtome")["data"].items()}


def container_env(workload: dict[str, Any]) -> dict[str, str]:
    """What the container sees: its envFrom ConfigMaps, then its own env (which wins)."""
    env: dict[str, str] = {}
    for source in container_of(workload).get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            env.update({k: str(v) for k, v in one("ConfigMap", name)["data"].items()})
    for item in container_of(workload).get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env


def unknown_env_names(names: list[str]) -> list[str]:
    """Names that are neither a singtome setting nor an allowed foreign variable."""
    return sorted(n for n in names if n not in SETTING_NAMES and n not in FOREIGN_ENV)


@pytest.fixture
def settings_from(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build Settings from a manifest's environment alone (the test's own SINGTOME_* cleared)."""

    def build(env: Mapping[str, str]) -> Settings:
        for key in list(os.environ):
            if key.startswith(SETTING_PREFIX):
                monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith(SETTING_PREFIX):
                monkeypatch.setenv(key, value)
        return Settings()

    return build


def compose() -> dict[str, Any]:
    return yaml_docs(COMPOSE)[0]


def worker_services(doc: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Compose services running `worker STAGE`, by service name: (stage, service)."""
    found = {}
    for name, service in doc["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[:1] == ["worker"]:
            found[name] = (command[1], service)
    return found


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return list(reservations.get("devices", []))


# --------------------------------------------------------------------------------------------------
# every file parses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_yaml_file_parses_into_objects(path: Path) -> None:
    docs = yaml_docs(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


# --------------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    validated = set()
    for path, doc in k8s_docs():
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {where}: {exc}")
        validated.add(doc["kind"])
    wanted = {"Namespace", "ConfigMap", "Secret", "Deployment", "Job", "ServiceAccount"}
    assert wanted <= validated


def test_schema_validation_rejects_a_misspelt_field() -> None:
    """The validator is strict and works here: a typo in a probe name does not pass."""
    broken = json.loads(json.dumps(deployment("mixer")))
    container = container_of(broken)
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_everything_lives_in_the_singtome_namespace() -> None:
    namespaces = of_kind("Namespace")
    assert [ns["metadata"]["name"] for ns in namespaces] == ["singtome"]
    for path, doc in k8s_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "singtome", path.name


def test_one_deployment_per_stage_running_its_worker() -> None:
    assert {d["metadata"]["name"] for d in of_kind("Deployment")} == {
        f"singtome-{stage}" for stage in STAGES
    }
    for stage in STAGES:
        container = container_of(deployment(stage))
        # the image's ENTRYPOINT is `singtome` (checked against the Dockerfile below)
        assert container["args"] == ["worker", stage]
        flavor = "cuda" if stage in GPU_STAGES else "cpu"
        assert container["image"].endswith(f":{flavor}"), container["image"]


def test_gpu_stages_request_a_gpu_on_gpu_nodes_and_the_mixer_does_not() -> None:
    assert set(STAGES) > GPU_STAGES
    for stage in STAGES:
        pod = deployment(stage)["spec"]["template"]["spec"]
        resources = container_of(deployment(stage))["resources"]
        if stage in GPU_STAGES:
            assert str(resources["requests"]["nvidia.com/gpu"]) == "1", stage
            assert str(resources["limits"]["nvidia.com/gpu"]) == "1", stage
            assert pod["nodeSelector"], stage
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), stage
        else:
            assert "nvidia.com/gpu" not in json.dumps(pod), stage


def test_every_container_has_cpu_and_memory_requests_and_a_memory_limit() -> None:
    for kind in ("Deployment", "Job"):
        for workload in of_kind(kind):
            resources = container_of(workload)["resources"]
            name = workload["metadata"]["name"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def test_probes_hit_health_on_the_health_port() -> None:
    for stage in STAGES:
        container = container_of(deployment(stage))
        port = int(container_env(deployment(stage))["SINGTOME_HEALTH_PORT"])
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/health", (stage, probe)
            assert named.get(get["port"], get["port"]) == port, (stage, probe)


def test_prometheus_scrapes_metrics_on_the_health_port() -> None:
    for stage in STAGES:
        annotations = deployment(stage)["spec"]["template"]["metadata"]["annotations"]
        port = container_env(deployment(stage))["SINGTOME_HEALTH_PORT"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert annotations["prometheus.io/port"] == port


def test_termination_grace_outlasts_the_shutdown_grace(settings_from: Any) -> None:
    for stage in STAGES:
        settings = settings_from(container_env(deployment(stage)))
        pod_grace = deployment(stage)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # the job's grace, then the worker's own bound to commit and leave the group (after
        # which it exits anyway), before the kubelet's SIGKILL; but no endless hang
        worker_bound = settings.runtime.shutdown_grace_s + settings.runtime.shutdown_leave_s
        assert worker_bound < pod_grace <= settings.runtime.shutdown_grace_s + 120, stage


def test_env_from_refers_to_objects_that_exist() -> None:
    for kind in ("Deployment", "Job"):
        for workload in of_kind(kind):
            for source in container_of(workload).get("envFrom", []):
                if "configMapRef" in source:
                    one("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    one("Secret", source["secretRef"]["name"])
    volumes = [v for d in of_kind("Deployment") for v in d["spec"]["template"]["spec"]["volumes"]]
    for volume in volumes:
        if "persistentVolumeClaim" in volume:
            one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_env_names_in_manifests_are_settings() -> None:
    names = list(configmap_env())
    for secret in of_kind("Secret"):
        names += list(secret.get("stringData", {})) + list(secret.get("data", {}))
    for kind in ("Deployment", "Job"):
        for workload in of_kind(kind):
            names += [item["name"] for item in container_of(workload).get("env", [])]
    for service in compose()["services"].values():
        names += [n for n in service.get("environment", {}) if not n.startswith("KAFKA_")]
    assert unknown_env_names(names) == []


def test_a_misspelt_setting_is_caught() -> None:
    assert unknown_env_names(["SINGTOME_BROKER_ULR", "SINGTOME_BROKER_URL", "AWS_REGION"]) == [
        "SINGTOME_BROKER_ULR"
    ]


def test_configmap_values_are_valid_settings(settings_from: Any) -> None:
    settings = settings_from(configmap_env())
    assert settings.runtime.health_port == int(configmap_env()["SINGTOME_HEALTH_PORT"]) > 0
    assert str(settings.models.dir) == "/models"
    assert settings.broker.topic_replication >= 3, "production topics are replicated"


def test_the_models_volume_is_mounted_read_only_where_settings_look() -> None:
    for stage in STAGES:
        mounts = {m["mountPath"]: m for m in container_of(deployment(stage))["volumeMounts"]}
        model_dir = container_env(deployment(stage))["SINGTOME_MODEL_DIR"]
        assert mounts[model_dir].get("readOnly") is True, stage


def test_the_topics_job_runs_topics_create_of_the_cli() -> None:
    job = one("Job", "singtome-topics")
    assert container_of(job)["args"] == ["topics", "create"]
    result = runner.invoke(app, ["topics", "create", "--help"])
    assert result.exit_code == 0, result.output


def test_a_scaled_object_per_stage_on_its_group_lag(settings_from: Any) -> None:
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in of_kind("ScaledObject")}
    assert set(scaled) == {f"singtome-{stage}" for stage in STAGES}
    for stage, topics in STAGES.items():
        settings = settings_from(container_env(deployment(stage)))
        spec = scaled[f"singtome-{stage}"]["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == group_id(stage, settings)
        assert meta["topic"] == physical(topics.consumes, settings.broker.topic_prefix)
        assert meta["bootstrapServers"] == bootstrap_servers(settings)
        assert int(meta["lagThreshold"]) >= 1
        # the workers start a new group at the earliest offset; so must the lag count
        assert meta["offsetResetPolicy"] == "earliest"
        # a partition feeds one consumer of a group: more replicas than partitions would idle
        assert (
            0
            <= spec["minReplicaCount"]
            <= spec["maxReplicaCount"]
            <= settings.broker.topic_partitions
        )


# --------------------------------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def test_compose_file_matches_the_compose_spec_schema() -> None:
    validator = jsonschema.Draft7Validator(compose_schema())
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_schema_rejects_a_misspelt_service_key() -> None:
    broken = compose()
    broken["services"]["mixer"]["helthcheck"] = broken["services"]["mixer"].pop("healthcheck")
    assert not jsonschema.Draft7Validator(compose_schema()).is_valid(broken)


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _docker_compose_available(),
    reason="the docker compose plugin is not installed here; the compose-spec schema test "
    "validates the file instead",
)
def test_docker_compose_config_accepts_the_file() -> None:
    for profile in ("cpu", "gpu"):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_compose_runs_kafka_in_kraft_mode_and_an_s3_server() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    roles = set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(","))
    assert roles == {"broker", "controller"}
    assert not any("zookeeper" in str(s.get("image", "")) for s in services.values())
    assert any(re.search(r"seaweedfs|minio", str(s.get("image", ""))) for s in services.values()), (
        "an S3 server"
    )


def test_compose_workers_use_the_compose_broker_and_s3(settings_from: Any) -> None:
    services = compose()["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name, (_, service) in worker_services(compose()).items():
        settings = settings_from(service["environment"])
        for server in bootstrap_servers(settings).split(","):
            assert f"//{server}" in advertised, name
        endpoint = service["environment"]["AWS_ENDPOINT_URL_S3"]
        host = endpoint.split("//", 1)[1].split(":", 1)[0]
        assert host in services, (name, endpoint)


def test_compose_has_a_one_shot_init_that_workers_wait_for() -> None:
    services = compose()["services"]
    init = services["init"]
    assert "singtome topics create" in " ".join(init["command"])
    assert "ensure_bucket" in " ".join(init["command"])
    assert str(init.get("restart", "no")) == "no"
    for name, _ in worker_services(compose()).items():
        condition = services[name]["depends_on"]["init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_compose_runs_every_stage_with_gpus_only_in_the_gpu_profile(settings_from: Any) -> None:
    workers = worker_services(compose())
    stages_run = {stage for stage, _ in workers.values()}
    assert stages_run == set(STAGES)
    for name, (stage, service) in workers.items():
        assert stage in STAGES
        devices = gpu_devices(service)
        profiles = service.get("profiles", [])
        if devices:
            assert stage in GPU_STAGES, name
            assert profiles == ["gpu"], name
            assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        elif stage in GPU_STAGES:
            # the CPU twin of a GPU stage: never started beside the GPU one
            assert profiles == ["cpu"], name
        else:
            assert not profiles, name
    for stage in GPU_STAGES:
        assert any(s == stage and gpu_devices(svc) for s, svc in workers.values()), stage


def test_compose_healthchecks_hit_health_on_the_health_port(settings_from: Any) -> None:
    for name, (_, service) in worker_services(compose()).items():
        settings = settings_from(service["environment"])
        check = " ".join(service["healthcheck"]["test"])
        assert f":{settings.runtime.health_port}/health" in check, name
        grace = float(service["stop_grace_period"].rstrip("s"))
        assert settings.runtime.shutdown_grace_s + settings.runtime.shutdown_leave_s < grace, name


# --------------------------------------------------------------------------------------------------
# what is exposed: health/metrics on loopback unless a container asks, no default secret
# --------------------------------------------------------------------------------------------------


def test_health_binds_loopback_by_default_and_all_interfaces_in_containers(
    settings_from: Any,
) -> None:
    assert settings_from({}).runtime.health_host == "127.0.0.1"
    for stage in STAGES:
        env = container_env(deployment(stage))
        assert settings_from(env).runtime.health_host == "0.0.0.0", stage
    for name, (_, service) in worker_services(compose()).items():
        assert settings_from(service["environment"]).runtime.health_host == "0.0.0.0", name
    _, stages = parse_dockerfile(DOCKERFILE)
    assert stages["worker"].env["SINGTOME_HEALTH_HOST"] == "0.0.0.0"


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port}"
            assert text.startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 2, "the broker and S3 are reachable from the host"


# ${VAR:-default} / ${VAR-default}: a value compose fills in when the variable is unset.
_DEFAULTED = re.compile(r"\$\{(\w+):?-[^}]*\}")


def test_compose_has_no_default_secret() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    defaulted = {name for name in _DEFAULTED.findall(text)}
    assert not {n for n in defaulted if re.search("SECRET|PASSWORD|TOKEN", n)}, defaulted
    env = compose()["x-singtome-env"]
    assert re.fullmatch(r"\$\{DEV_S3_SECRET_KEY:\?[^}]+\}", env["AWS_SECRET_ACCESS_KEY"])
    identities = compose()["configs"]["s3-identities"]["content"]
    assert "${DEV_S3_SECRET_KEY:?" in identities, "the S3 server takes the same required secret"


def test_the_no_default_secret_check_catches_one() -> None:
    assert _DEFAULTED.findall("key: ${DEV_S3_SECRET_KEY:-dev-secret}") == ["DEV_S3_SECRET_KEY"]
    assert _DEFAULTED.findall("key: ${DEV_S3_SECRET_KEY:?required}") == []


# --------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str = "root"
    volumes: list[str] = field(default_factory=list)
    healthcheck: str | None = None


def dockerfile_lines(text: str) -> Iterator[str]:
    """Logical lines: comments dropped, backslash continuations joined."""
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            yield line


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    assert value.startswith("["), f"use the exec form: {value}"
    return list(json.loads(value))


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARGs and the stages, each with what it inherits from the stage it is built FROM."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in dockerfile_lines(path.read_text(encoding="utf-8")):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base, name = words[0], words[2] if len(words) == 3 else str(len(stages))
            current = Stage(name=name, base=base, instructions=[])
            parent = stages.get(base)
            if parent is not None:
                current.env = dict(parent.env)
                current.entrypoint, current.cmd = parent.entrypoint, parent.cmd
                current.user, current.volumes = parent.user, list(parent.volumes)
                current.healthcheck = parent.healthcheck
            stages[name] = current
            continue
        if current is None:
            assert instruction == "ARG", line
            key, _, value = rest.partition("=")
            global_args[key.strip()] = value.strip()
            continue
        current.instructions.append((instruction, rest))
        if instruction == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                current.env[key] = value
        elif instruction == "ENTRYPOINT":
            # Docker: a new ENTRYPOINT clears the CMD inherited from the base
            current.entrypoint, current.cmd = _exec_form(rest), None
        elif instruction == "CMD":
            current.cmd = _exec_form(rest)
        elif instruction == "USER":
            current.user = rest.strip()
        elif instruction == "VOLUME":
            current.volumes += _exec_form(rest) if rest.startswith("[") else rest.split()
        elif instruction == "HEALTHCHECK":
            current.healthcheck = None if rest.strip() == "NONE" else rest
    return global_args, stages


def copy_sources(stage: Stage) -> list[str]:
    sources = []
    for instruction, rest in stage.instructions:
        if instruction not in ("COPY", "ADD"):
            continue
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def test_dockerfile_builds_a_cpu_and_a_cuda_image_from_one_flavor_argument() -> None:
    args, stages = parse_dockerfile(DOCKERFILE)
    assert args["FLAVOR"] == "cpu"
    assert args["CPU_BASE"].startswith("python:3.11")
    assert args["CUDA_BASE"].startswith("pytorch/pytorch:2.9.1-cuda")
    assert stages["base-cpu"].base == "${CPU_BASE}"
    assert stages["base-cuda"].base == "${CUDA_BASE}"
    assert stages["os"].base == "base-${FLAVOR}"
    install = " ".join(rest for i, rest in stages["os"].instructions if i == "RUN")
    assert re.search(r"apt-get install[^&]*\bffmpeg\b", install)


def test_dockerfile_pins_torch_and_audio_separator_as_pyproject_does() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = ("torch==", "torchaudio==", "audio-separator[")
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith(wanted)]
    assert len(pins) == len(wanted)
    text = DOCKERFILE.read_text(encoding="utf-8")
    for pin in pins:
        assert pin in text, pin


def test_worker_image_runs_the_cli_as_a_non_root_user() -> None:
    _, stages = parse_dockerfile(DOCKERFILE)
    worker = stages["worker"]
    assert worker.entrypoint == ["singtome"]
    assert worker.cmd is not None and worker.cmd[0] == "worker" and worker.cmd[1] in STAGES
    assert worker.user not in ("root", "0", "0:0")
    assert "/models" in worker.volumes
    assert worker.env["SINGTOME_MODEL_DIR"] == "/models"
    assert worker.healthcheck is not None and "/health" in worker.healthcheck
    assert "SINGTOME_HEALTH_PORT" in worker.healthcheck
    for name in worker.env:
        if name.startswith(SETTING_PREFIX):
            assert name in SETTING_NAMES, name
    # the CMD's command line is one the CLI accepts
    result = runner.invoke(app, [*worker.cmd[:1], "--help"])
    assert result.exit_code == 0, result.output
    assert "separator" in result.output


def test_no_model_weights_are_baked_in_unless_asked() -> None:
    _, stages = parse_dockerfile(DOCKERFILE)
    build_args = {}
    for stage in stages.values():
        for instruction, rest in stage.instructions:
            if instruction == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                build_args[key] = value.strip('"')
        for source in copy_sources(stage):
            assert not re.search(r"\.(pth?|onnx|ckpt|safetensors)$", source), source
    assert build_args["WITH_UVR_MODELS"] == "0"
    seeding = [rest for _, rest in stages["build"].instructions if "seed_uvr_models.py" in rest]
    seeding = [rest for rest in seeding if not rest.startswith("scripts/")]  # the COPY
    assert seeding and all('[ "$WITH_UVR_MODELS" = 1 ]' in rest for rest in seeding)


def test_sagemaker_target_runs_singtome_train_with_sagemaker_paths() -> None:
    _, stages = parse_dockerfile(DOCKERFILE)
    train = stages["sagemaker-train"]
    assert train.entrypoint == ["train"]
    assert train.cmd == []
    assert train.env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert train.env["SM_CHANNEL_TRAINING"] == "/opt/ml/input/data/training"
    assert train.user not in ("root", "0", "0:0")
    copies = [rest for i, rest in train.instructions if i == "COPY"]
    assert any(c.endswith("deploy/docker/sagemaker_train.py /usr/local/bin/train") for c in copies)
    assert "singtome" in SAGEMAKER_ENTRY.read_text(encoding="utf-8")


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    patterns = dockerignore_patterns()
    _, stages = parse_dockerfile(DOCKERFILE)
    for stage in stages.values():
        for source in copy_sources(stage):
            assert (REPO / source).exists(), source
            assert not dockerignored(source, patterns), source
    for package in ("schemas", "foundation", "streams", "agents", "frontends"):
        for module in (REPO / package).rglob("*.py"):
            relative = str(module.relative_to(REPO))
            assert "__pycache__" in relative or not dockerignored(relative, patterns), relative
    for leftover in (
        ".git/HEAD",
        "tests/unit/test_deploy.py",
        "bench/train.py",
        "singtome-mixer-v1-data/v1/tables",
        "t0a1b2c3d.singtome-trainer-v1-data/x",
        ".venv/bin/python",
        "streams/__pycache__/cli.cpython-311.pyc",
        "agents/voice/stray_weights.pth",
        "models/hubert_base.pt",
    ):
        assert dockerignored(leftover, patterns), leftover


# --------------------------------------------------------------------------------------------------
# the SageMaker entry
# --------------------------------------------------------------------------------------------------


def sagemaker_entry() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sagemaker_train", SAGEMAKER_ENTRY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sagemaker_entry_turns_hyperparameters_into_train_flags(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "hyperparameters.json").write_text(
        json.dumps(
            {
                "epochs": "5",
                "f0_method": '"harvest"',  # as SageMaker's framework estimators encode it
                "batch_size": "2",
                "sagemaker_region": '"eu-west-1"',
            }
        )
    )
    models = tmp_path / "models"
    (models / "pretrained_v2").mkdir(parents=True)
    (models / "hubert_base.pt").write_bytes(b"")
    env = {
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_CHANNEL_MODELS": str(models),
        "SINGTOME_RMVPE_PATH": "/elsewhere/rmvpe.pt",
    }
    command, new_env = sagemaker_entry().train_command(["train", "--sample-rate", "48k"], env)
    assert command == [
        "singtome",
        "train",
        "--batch-size",
        "2",
        "--epochs",
        "5",
        "--f0-method",
        "harvest",
        "--sample-rate",
        "48k",
    ]
    assert new_env["SINGTOME_HUBERT_PATH"] == str(models / "hubert_base.pt")
    assert new_env["SINGTOME_PRETRAINED_DIR"] == str(models / "pretrained_v2")
    assert new_env["SINGTOME_RMVPE_PATH"] == "/elsewhere/rmvpe.pt"  # set already: kept
    # the real CLI parses the flags (without training)
    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    context = train.make_context("train", command[2:])
    assert context.params["epochs"] == 5 and context.params["f0_method"] == "harvest"


def test_sagemaker_entry_execs_singtome_train(tmp_path: Path) -> None:
    """Run as SageMaker does (`train` as the only argument) with a stand-in `singtome`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "singtome"
    fake.write_text('#!/bin/sh\necho "$@"\necho "hubert=$SINGTOME_HUBERT_PATH"\n')
    fake.chmod(0o755)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "hyperparameters.json").write_text('{"epochs": "3"}')
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SM_INPUT_CONFIG_DIR": str(tmp_path / "config"),
    }
    result = subprocess.run(
        [sys.executable, str(SAGEMAKER_ENTRY), "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["train --epochs 3", "hubert="]


# --------------------------------------------------------------------------------------------------
# the operations guide
# --------------------------------------------------------------------------------------------------


def test_operations_guide_names_only_real_settings_and_commands() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    named = set(re.findall(r"\b" + SETTING_PREFIX + r"[A-Z0-9_]+\b", text))
    assert named, "the guide names settings"
    assert unknown_env_names(sorted(named)) == []
    for stage in STAGES:
        assert stage in text
    commands = set(re.findall(r"`singtome ([a-z]+)", text))
    cli_commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert commands and commands <= cli_commands, commands - cli_commands


def test_the_configmap_finds_the_models_where_models_pull_puts_them(
    settings_from: Any, tmp_path: Path
) -> None:
    from streams.models.manifest import load_manifest

    manifest = load_manifest(None, separation=False)
    expected = {}
    for setting in PULLED_DEFAULTS:
        entry = next(iter(manifest.for_setting(setting)))  # type: ignore[arg-type]
        path = entry.local_path(tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        expected[setting] = path.parent if setting == "models.pretrained_dir" else path
    settings = settings_from({**configmap_env(), "SINGTOME_MODEL_DIR": str(tmp_path)})
    assert {name: attrgetter(name)(settings) for name in PULLED_DEFAULTS} == expected
