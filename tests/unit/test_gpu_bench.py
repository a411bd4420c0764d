"""bench/gpu.sh in its dry mode: every GPU-bound path (conversion fp32/fp16 with batched pieces,
AMP training step, separation) runs on the device it is given.

This machine has no CUDA: a hidden ``.cuda()`` or ``device='cuda'`` anywhere in these paths would
fail here, so the dry run on ``cpu`` is the device-placement check for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_dry_mode_runs_every_path_on_the_given_device() -> None:
    env = {**os.environ, "SINGTOME_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["device"] == "cpu" and report["dry"] is True
    conversion = report["conversion"]
    assert {(c["precision"], c["batch_pieces"]) for c in conversion} == {("fp32", 1), ("fp16", 4)}
    for case in conversion:
        assert case["finite"] and case["samples"] == 2 * 48000
        assert case["pieces"] > 1  # the batched case really batches several pieces
        assert case["rtf"] > 0 and case["peak_gpu_mb"] is None
    assert report["training"]["steps_per_s"] > 0
    assert report["training"]["precision"] == "fp32" and report["training"]["amp"] is False
    assert report["training"]["loss_mel_last"] == report["training"]["loss_mel_last"]  # not NaN
    assert report["separation"]["stems"] == ["accompaniment", "vocals"]
