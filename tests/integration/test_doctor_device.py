"""`singtome doctor` against the real broker and S3 server; the device a worker chose, in its log
and as a metric label."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from pathlib import Path

from tests.pipeline import SINGTOME, Pipeline


def _doctor(env: dict[str, str]) -> tuple[int, dict[str, tuple[str, str]]]:
    result = subprocess.run(
        [SINGTOME, "doctor"], env=env, capture_output=True, text=True, timeout=300
    )
    lines = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition("  ")
        lines[name.strip()] = (status, detail.strip())
    return result.returncode, lines


def test_doctor_on_a_healthy_cpu_machine(pipeline: Pipeline, tmp_path: Path) -> None:
    env = {
        **pipeline.env,
        "SINGTOME_MODEL_DIR": str(tmp_path / "models"),
        "CUDA_VISIBLE_DEVICES": "",
        "SINGTOME_DEVICE": "auto",
    }
    code, lines = _doctor(env)
    assert lines["broker"][0] == "ok" and pipeline.stack.bootstrap in lines["broker"][1]
    assert lines["topics"][0] == "ok", lines["topics"]  # the pipeline created its topics
    assert lines["s3"][0] == "ok" and pipeline.stack.bucket in lines["s3"][1]
    assert lines["device"][0] == "warn"  # the CPU, said so
    assert code == 0, "warnings only: every stage can run here"
    # topics not created yet are said, not fatal (workers create them at start); a missing
    # bucket is fatal
    code, lines = _doctor(
        {
            **env,
            "SINGTOME_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
            "SINGTOME_S3_BUCKET": "no-such-bucket-here",
        }
    )
    assert lines["topics"][0] == "warn" and "singtome topics create" in lines["topics"][1]
    assert lines["s3"][0] == "fail" and "does not exist" in lines["s3"][1]
    assert code == 1
    assert [name for name, (status, _) in lines.items() if status == "fail"] == ["s3"]


def test_worker_logs_and_exports_the_device_it_chose(pipeline: Pipeline) -> None:
    proc, port = pipeline.start_worker(
        "trainer",
        "tests.stages:trainer",
        env={"CUDA_VISIBLE_DEVICES": "", "SINGTOME_DEVICE": "auto"},
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'singtome_device_info{device="cpu",stage="trainer"} 1.0' in metrics
    log = proc.log_path.read_text()  # type: ignore[attr-defined]
    chosen = [json.loads(line) for line in log.splitlines() if '"device chosen"' in line]
    assert chosen and chosen[0]["device"] == "cpu" and chosen[0]["configured"] == "auto"
