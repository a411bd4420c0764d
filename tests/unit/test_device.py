"""One function chooses the device; a GPU that was asked for and is not there stops a worker."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch

from foundation.device import DeviceUnavailable, device_report, resolve_device
from tests.pipeline import SINGTOME


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without CUDA, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_is_the_cpu_without_a_gpu(no_gpu: None) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_refused_with_the_way_out(no_gpu: None, name: str) -> None:
    with pytest.raises(DeviceUnavailable) as refused:
        resolve_device(name)
    message = str(refused.value)
    assert "sees no GPU" in message or "no CUDA support" in message
    assert "SINGTOME_DEVICE=cpu" in message


def test_a_gpu_index_beyond_the_visible_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceUnavailable, match="only 1 GPU"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["tpu", "gpu", "mps"])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(DeviceUnavailable, match="SINGTOME_DEVICE"):
        resolve_device(name)


def test_the_report_says_what_torch_sees(no_gpu: None) -> None:
    report = device_report("auto")
    assert report.torch_version == torch.__version__
    assert not report.cuda_visible and report.gpus == []
    assert report.chosen == "cpu" and report.error is None
    refused = device_report("cuda")
    assert refused.chosen is None and refused.error and "SINGTOME_DEVICE=cuda" in refused.error


def test_worker_with_cuda_and_no_gpu_stops_at_start() -> None:
    """Before it touches the broker (pointed at a closed port here): a clear error, exit 1."""
    env = {
        **os.environ,
        "SINGTOME_DEVICE": "cuda",
        "CUDA_VISIBLE_DEVICES": "",  # no GPU, even on a machine that has one
        "SINGTOME_BROKER_URL": "kafka://127.0.0.1:9",
        "SINGTOME_LOG_FORMAT": "json",
    }
    started = time.monotonic()
    result = subprocess.run(
        [SINGTOME, "worker", "trainer", "--handler", "tests.stages:trainer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1
    assert "SINGTOME_DEVICE=cuda" in result.stderr and "no GPU" in result.stderr
    assert "the configured device is not usable" in result.stdout + result.stderr
    assert "Unable to bootstrap" not in result.stdout + result.stderr, "stopped before the broker"
    assert time.monotonic() - started < 120
