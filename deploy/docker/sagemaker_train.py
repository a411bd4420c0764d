#!/usr/bin/env python3
"""The entry of the ``sagemaker-train`` image, installed there as /usr/local/bin/train.

SageMaker starts a training image as ``docker run IMAGE train``, mounts each input channel at
/opt/ml/input/data/<channel> (and sets SM_CHANNEL_<CHANNEL>), writes the job's hyperparameters, all
as strings, to /opt/ml/input/config/hyperparameters.json, and uploads /opt/ml/model when the
container exits 0. ``singtome train`` already reads SM_CHANNEL_TRAINING (--trainset-dir) and
SM_MODEL_DIR (--exp-dir); this maps the rest and then becomes ``singtome train``:

- SageMaker's leading ``train`` argument is dropped; any other argument passes through;
- each hyperparameter ``name: value`` becomes ``--name value`` (underscores as dashes), e.g.
  ``{"epochs": "200", "f0_method": "rmvpe"}``; SageMaker's own ``sagemaker_*`` entries are skipped;
- a ``models`` channel holding hubert_base.pt, rmvpe.pt and pretrained_v2/ sets
  SINGTOME_HUBERT_PATH, SINGTOME_RMVPE_PATH and SINGTOME_PRETRAINED_DIR, unless already set.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

CONFIG_DIR = "/opt/ml/input/config"
MODELS_CHANNEL_FILES = {
    "SINGTOME_HUBERT_PATH": "hubert_base.pt",
    "SINGTOME_RMVPE_PATH": "rmvpe.pt",
    "SINGTOME_PRETRAINED_DIR": "pretrained_v2",
}


def _plain(value: object) -> str:
    """SageMaker's framework estimators JSON-encode string values ('"rmvpe"'); undo that once."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return str(json.loads(text))
        except json.JSONDecodeError:
            return text
    return text


def hyperparameter_flags(path: Path) -> list[str]:
    """``--name value`` pairs for `singtome train` from a hyperparameters.json, if there is one."""
    if not path.is_file():
        return []
    values = json.loads(path.read_text(encoding="utf-8"))
    flags: list[str] = []
    for name, value in sorted(values.items()):
        if name.startswith("sagemaker_"):
            continue
        flags += [f"--{name.replace('_', '-')}", _plain(value)]
    return flags


def models_environment(env: Mapping[str, str]) -> dict[str, str]:
    """SINGTOME_* model paths found in the ``models`` channel, for those not set already."""
    channel = env.get("SM_CHANNEL_MODELS")
    if not channel:
        return {}
    found: dict[str, str] = {}
    for variable, name in MODELS_CHANNEL_FILES.items():
        candidate = Path(channel) / name
        if variable not in env and candidate.exists():
            found[variable] = str(candidate)
    return found


def train_command(argv: list[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `singtome train` command line and environment for this container's arguments."""
    args = argv[1:] if argv[:1] == ["train"] else list(argv)
    config_dir = Path(env.get("SM_INPUT_CONFIG_DIR", CONFIG_DIR))
    flags = hyperparameter_flags(config_dir / "hyperparameters.json")
    return ["singtome", "train", *flags, *args], {**env, **models_environment(env)}


def main() -> None:
    command, env = train_command(sys.argv[1:], os.environ)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
