"""The demo's first step: pull the RVC models when it can, say in one line which voice it uses."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from frontends.demo import pull_voice_models
from streams.models.manager import RVC_ESSENTIALS, pull_models, select
from streams.settings import Settings
from tests.modelserver import model_server

RVC_PATHS = {
    "hubert_base.pt": ("rvc/hubert_base.pt", "hubert_path"),
    "rmvpe.pt": ("rvc/rmvpe.pt", "rmvpe_path"),
    "f0G40k.pth": ("rvc/pretrained_v2/f0G40k.pth", "pretrained_dir"),
    "f0D40k.pth": ("rvc/pretrained_v2/f0D40k.pth", "pretrained_dir"),
}


def test_offline_demo_falls_back_at_once_and_says_why(tmp_path: Path) -> None:
    settings = Settings(models={"dir": tmp_path / "models", "mirror": "http://127.0.0.1:9"})
    started = time.monotonic()
    after, line = pull_voice_models(settings, None, timeout_s=60)
    assert time.monotonic() - started < 5
    assert after.models.hubert_path is None
    assert line.startswith("voice: the WORLD fallback, not RVC (could not fetch hubert_base.pt")
    assert "connection refused" in line and "\n" not in line


def test_demo_uses_rvc_once_the_encoder_arrived(tmp_path: Path) -> None:
    """A private manifest stands in for the real files (they cannot be downloaded here); the
    RMVPE file is missing on the server: RVC all the same, and the line says what is missing."""
    with model_server() as server:
        rows = []
        for name, (path, setting) in RVC_PATHS.items():
            body = hashlib.sha256(name.encode()).digest() * 1000
            if name != "rmvpe.pt":
                server.add(f"/m/{name}", body)
            rows.append(
                {
                    "name": name,
                    "kind": "other",
                    "url": f"{server.url}/m/{name}",
                    "size": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "licence": "test",
                    "path": path,
                    "setting": setting,
                }
            )
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps(rows))
        models = tmp_path / "models"
        settings = Settings(models={"dir": models, "manifest": manifest, "mirror": None})
        shown: list[str] = []

        def progress():  # type: ignore[no-untyped-def]
            import contextlib

            return contextlib.nullcontext(lambda entry, done, total: shown.append(entry.name))

        after, line = pull_voice_models(settings, progress, timeout_s=60)
    assert after.models.hubert_path == models / "rvc" / "hubert_base.pt"
    assert after.models.pretrained_dir == models / "rvc" / "pretrained_v2"
    assert after.models.rmvpe_path is None
    assert line.startswith(f"voice: RVC (content encoder {models / 'rvc' / 'hubert_base.pt'})")
    assert "not fetched: rmvpe.pt" in line and "HTTP 404" in line and "\n" not in line
    assert {"hubert_base.pt", "f0G40k.pth", "f0D40k.pth"} <= set(shown)
    # the workers, started afterwards with the same environment, find the files by themselves
    again = Settings(models={"dir": models, "manifest": manifest})
    assert again.models.hubert_path == after.models.hubert_path


def test_the_pull_is_bounded_in_time(tmp_path: Path) -> None:
    settings = Settings(models={"dir": tmp_path / "models", "mirror": "http://127.0.0.1:9"})
    report = pull_models(settings, select(settings, RVC_ESSENTIALS), None, timeout_s=0)
    assert not report.ok and len(report.failed) == len(RVC_ESSENTIALS)
    assert all("out of time" in f.message for f in report.failed)
