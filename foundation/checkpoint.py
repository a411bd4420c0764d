"""The one safe checkpoint loader: ``torch.load(weights_only=True)``, never running pickled code,
with every failure mapped to a stage error code.

A missing file is ``model_not_found``; a file whose unpickling asks to run code (a class, a
function, a reduce the weights-only unpickler refuses) is ``unsafe_model``; anything else that does
not load (truncated, not a checkpoint) is ``invalid_model``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from foundation.errors import StageError

_CODE_REFUSALS = (
    "unsupported global",
    "not an allowed global",
    "reduce for unrecognized",
    "can only build",
    "can only create new object",
)


def refused_for_code(exc: BaseException) -> bool:
    """Whether a ``weights_only`` load failed because the file asks to run code (as opposed
    to the file being truncated or not a checkpoint at all)."""
    message = str(exc).lower()
    return any(reason in message for reason in _CODE_REFUSALS)


def load_checkpoint(path: Path | str, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ``allowed`` are extra globals (or
    ``(stand_in, name)`` pairs) the weights-only unpickler may build."""
    path = Path(path)
    if not path.is_file():
        raise StageError("model_not_found", f"model file {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if refused_for_code(exc):
            raise StageError(
                "unsafe_model",
                f"{path.name} needs pickled Python code to load; refusing to execute it",
            ) from exc
        raise StageError("invalid_model", f"{path.name} is not a PyTorch checkpoint") from exc
    except Exception as exc:
        raise StageError(
            "invalid_model", f"{path.name} is not a readable PyTorch checkpoint: {exc}"
        ) from exc
