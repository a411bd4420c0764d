"""`singtome doctor` on a machine without CUDA (whatever this one has), without a broker or S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from frontends.cli import app
from streams.settings import get_settings
from tests.conftest import logging_kept


@pytest.fixture
def doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    runner = CliRunner()

    def run(*args: str, **env: str) -> tuple[int, dict[str, tuple[str, str]]]:
        base = {
            "SINGTOME_MODEL_DIR": str(tmp_path / "models"),
            "SINGTOME_BROKER_URL": "kafka://127.0.0.1:9",  # closed: nothing listens there
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "SINGTOME_DEVICE": "auto",
        }
        get_settings.cache_clear()
        with logging_kept():
            result = runner.invoke(app, ["doctor", *args], env={**base, **env})
        get_settings.cache_clear()
        lines: dict[str, tuple[str, str]] = {}
        for line in result.output.splitlines():
            status, _, rest = line.partition(" ")
            if status in {"ok", "warn", "fail"}:
                name, _, detail = rest.strip().partition("  ")
                lines[name.strip()] = (status, detail.strip())
        return result.exit_code, lines

    yield run


def test_doctor_without_cuda_broker_or_s3(doctor: Any) -> None:
    code, lines = doctor()
    assert code == 1, "the broker and S3 are needed by every stage"
    assert lines["torch"][0] == "ok" and torch.__version__ in lines["torch"][1]
    assert lines["device"][0] == "warn" and "no CUDA GPU visible" in lines["device"][1]
    assert lines["ffmpeg"][0] == "ok"
    assert lines["broker"][0] == "fail" and "127.0.0.1:9 unreachable" in lines["broker"][1]
    assert lines["topics"][0] == "warn"
    assert lines["s3"][0] == "fail" and "127.0.0.1:9" in lines["s3"][1]
    assert lines["voice backend"][0] == "warn" and "WORLD fallback" in lines["voice backend"][1]
    assert lines["hubert_base.pt"][0] == "warn" and "models pull" in lines["hubert_base.pt"][1]
    assert lines["separator model"][0] == "ok"
    assert lines["disk (models)"][0] in {"ok", "warn"}
    assert not any(name.startswith("gpu") for name in lines)


def test_doctor_fails_a_requested_gpu_that_is_not_there(doctor: Any) -> None:
    code, lines = doctor(SINGTOME_DEVICE="cuda")
    assert code == 1
    assert lines["device"][0] == "fail" and "SINGTOME_DEVICE=cuda" in lines["device"][1]
    # a mixer-only machine does not need the GPU, nor the voice models
    _, mixer = doctor("--stage", "mixer", SINGTOME_DEVICE="cuda")
    assert mixer["device"][0] == "warn"
    assert "voice backend" not in mixer and "hubert_base.pt" not in mixer


def test_doctor_fails_a_model_that_does_not_match(doctor: Any, tmp_path: Path) -> None:
    encoder = tmp_path / "models" / "rvc" / "hubert_base.pt"
    encoder.parent.mkdir(parents=True)
    encoder.write_bytes(b"not the 189507909 bytes of HuBERT")
    _, lines = doctor("--stage", "trainer")
    assert lines["hubert_base.pt"][0] == "fail" and "checksum" in lines["hubert_base.pt"][1]
    assert lines["voice backend"][0] == "ok"  # it would be used: hence the failure above


def test_doctor_fails_a_missing_uvr_model(doctor: Any, tmp_path: Path) -> None:
    _, lines = doctor("--stage", "separator", SINGTOME_SEPARATOR_MODEL="UVR-MDX-NET-Inst_HQ_3.onnx")
    assert lines["separator model"][0] == "fail"
    assert "singtome models pull UVR-MDX-NET-Inst_HQ_3.onnx" in lines["separator model"][1]
    # a Demucs model is its .yaml plus weights: each weight file missing is named
    uvr = tmp_path / "models" / "uvr"
    uvr.mkdir(parents=True)
    (uvr / "htdemucs_ft.yaml").write_text("models: [f7e0c4bc]\n")
    (uvr / "download_checks.json").write_text("{}")
    _, lines = doctor("--stage", "separator", SINGTOME_SEPARATOR_MODEL="htdemucs_ft.yaml")
    assert lines["htdemucs_ft.yaml"][0] == "ok"
    assert lines["f7e0c4bc-ba3fe64a.th"][0] == "fail"
    assert "needed by SINGTOME_SEPARATOR_MODEL=htdemucs_ft.yaml" in lines["f7e0c4bc-ba3fe64a.th"][1]
    assert "UVR-MDX-NET-Inst_HQ_3.onnx" not in lines, "only the configured model's files"


def test_doctor_rejects_an_unknown_stage(doctor: Any) -> None:
    code, lines = doctor("--stage", "mastering")
    assert code == 1 and lines["stages"][0] == "fail"
