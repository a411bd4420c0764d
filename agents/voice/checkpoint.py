"""RVC checkpoint formats: the small inference model, training checkpoints, pretrained weights.

Inference model (``<name>.pth``, what RVC WebUI puts in ``assets/weights``)::

    {"weight": state dict without enc_q (fp16), "config": [18 hyper-parameters],
     "info": "20epoch", "sr": "40k", "f0": 1, "version": "v2"}

Training checkpoint (``G_<step>.pth`` / ``D_<step>.pth``)::

    {"model": state dict, "iteration": epoch, "optimizer": optimizer state,
     "learning_rate": base lr, "global_step": step}

Public pretrained weights (``f0G48k.pth`` / ``f0D48k.pth``) are ``{"model": state dict}``.

Every file is read with ``torch.load(..., weights_only=True)``: a file that needs pickled code is
refused (``unsafe_model``), never executed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from agents.voice.configs import PHONE_DIMS, SAMPLE_RATES, SynthesizerConfig, Version
from agents.voice.synthesizer import Synthesizer
from foundation.checkpoint import load_checkpoint
from foundation.errors import StageError
from foundation.logging import get_logger

log = get_logger()

Precision = Literal["fp16", "fp32"]


def _sample_rate_name(sampling_rate: int) -> str:
    for name, rate in SAMPLE_RATES.items():
        if rate == sampling_rate:
            return name
    return f"{sampling_rate // 1000}k"


# --- inference model --------------------------------------------------------------------------


@dataclass
class VoiceModel:
    """A loaded RVC voice model, ready for inference."""

    synthesizer: Synthesizer  # in eval mode, without enc_q
    sr: int  # output sampling rate (Hz)
    f0: bool  # pitch-guided (NSF decoder)
    version: Version
    speaker_count: int
    info: str = ""
    fast: Any = None  # set by agents.voice.inference.prepare_for_inference

    @property
    def tgt_sr(self) -> int:
        return self.sr

    @property
    def phone_dim(self) -> int:
        return self.synthesizer.phone_dim

    @property
    def device(self) -> torch.device:
        return next(self.synthesizer.parameters()).device


def inference_state_dict(synthesizer: Synthesizer, precision: Precision = "fp16") -> dict[str, Any]:
    """The ``weight`` entry: every tensor but the posterior encoder's, in public key names."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return {
        key: value.detach().to("cpu", dtype)
        for key, value in synthesizer.state_dict().items()
        if not key.startswith("enc_q.")
    }


def save_inference_model(
    synthesizer: Synthesizer,
    path: Path,
    *,
    version: Version,
    info: str = "",
    precision: Precision = "fp16",
) -> Path:
    """Write the small RVC inference checkpoint (loadable by RVC WebUI, Applio and us).

    RVC stores fp16 weights (half the size); ``precision="fp32"`` keeps them bit-exact.
    """
    config = synthesizer.config
    checkpoint = {
        "weight": inference_state_dict(synthesizer, precision),
        "config": config.to_public_list(),
        "info": info,
        "sr": _sample_rate_name(config.sampling_rate),
        "f0": 1 if synthesizer.use_f0 else 0,
        "version": version,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)  # readers never see a half-written model
    return path


def _require(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise StageError("invalid_model", f"{path.name} is not an RVC voice model: {what}")


def load_voice_model(
    path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> VoiceModel:
    """Load an RVC inference checkpoint (ours, RVC WebUI's or Applio's) onto ``device``."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    _require(isinstance(checkpoint, Mapping), path, "top level is not a dict")
    if "weight" not in checkpoint and "model" in checkpoint:
        raise StageError(
            "invalid_model",
            f"{path.name} is a training checkpoint (G_*.pth), not an exported voice model",
        )
    weight = checkpoint.get("weight")
    _require(isinstance(weight, Mapping) and len(weight) > 0, path, "no 'weight' state dict")
    _require(all(isinstance(v, torch.Tensor) for v in weight.values()), path, "non-tensor weights")
    raw_config = checkpoint.get("config")
    _require(isinstance(raw_config, list | tuple), path, "no 'config' list")
    try:
        config = SynthesizerConfig.from_public_list(list(raw_config))
    except (ValueError, TypeError) as exc:
        raise StageError("invalid_model", f"{path.name}: bad 'config' list: {exc}") from exc

    # As RVC does: the speaker count is whatever the embedding table holds.
    speakers = weight.get("emb_g.weight")
    _require(isinstance(speakers, torch.Tensor) and speakers.dim() == 2, path, "no emb_g.weight")
    config = replace(config, spk_embed_dim=int(speakers.shape[0]))

    version = str(checkpoint.get("version", "v1"))  # RVC's default for files before v2
    _require(version in PHONE_DIMS, path, f"unknown version {version!r}")
    f0 = bool(int(checkpoint.get("f0", 1)))
    emb_phone = weight.get("enc_p.emb_phone.weight")
    _require(isinstance(emb_phone, torch.Tensor) and emb_phone.dim() == 2, path, "no emb_phone")
    phone_dim = int(emb_phone.shape[1])
    if phone_dim != PHONE_DIMS[version]:
        # Trust the weights: a mislabelled file still works with the matching content features.
        log.warning(
            "voice_model_version_mismatch", path=str(path), version=version, phone_dim=phone_dim
        )
        version = "v2" if phone_dim == PHONE_DIMS["v2"] else "v1"

    try:
        synthesizer = Synthesizer(config, phone_dim, use_f0=f0, with_posterior=False)
    except (ValueError, RuntimeError) as exc:
        raise StageError("invalid_model", f"{path.name}: unusable config: {exc}") from exc
    state = {k: v for k, v in weight.items() if not k.startswith("enc_q.")}
    try:
        synthesizer.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StageError(
            "invalid_model", f"{path.name}: weights do not fit its config: {exc}"
        ) from exc
    synthesizer.to(device=device, dtype=dtype).eval()
    return VoiceModel(
        synthesizer=synthesizer,
        sr=config.sampling_rate,
        f0=f0,
        version=version,  # type: ignore[arg-type]
        speaker_count=config.spk_embed_dim,
        info=str(checkpoint.get("info", "")),
    )


# --- training checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingState:
    epoch: int  # last finished epoch
    global_step: int
    learning_rate: float


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP / DataParallel


def save_training_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    learning_rate: float,
    epoch: int,
    global_step: int,
) -> Path:
    """RVC's ``G_*.pth`` / ``D_*.pth`` layout (plus ``global_step``) for resuming training."""
    payload = {
        "model": _unwrap(model).state_dict(),
        "iteration": epoch,
        "optimizer": optimizer.state_dict(),
        "learning_rate": learning_rate,
        "global_step": global_step,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_training_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> TrainingState:
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise StageError("invalid_model", f"{Path(path).name} is not a training checkpoint")
    try:
        _unwrap(model).load_state_dict(checkpoint["model"], strict=True)
        if optimizer is not None and "optimizer" in checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise StageError(
            "invalid_model", f"{Path(path).name} does not fit this model: {exc}"
        ) from exc
    epoch = int(checkpoint.get("iteration", 0))
    return TrainingState(
        epoch=epoch,
        global_step=int(checkpoint.get("global_step", 0)),
        learning_rate=float(checkpoint.get("learning_rate", 0.0)),
    )


_STEP = re.compile(r"_(\d+)\.pth$")


def training_checkpoints(directory: Path, prefix: str) -> list[Path]:
    """``<prefix>_<n>.pth`` files in ``directory``, oldest (smallest n) first."""
    found = []
    for candidate in Path(directory).glob(f"{prefix}_*.pth"):
        match = _STEP.search(candidate.name)
        if match:
            found.append((int(match.group(1)), candidate))
    return [p for _, p in sorted(found)]


def latest_training_checkpoint(directory: Path, prefix: str) -> Path | None:
    checkpoints = training_checkpoints(directory, prefix)
    return checkpoints[-1] if checkpoints else None


# --- public pretrained weights ----------------------------------------------------------------


@dataclass
class PretrainedLoadReport:
    """What a shape-checked, non-strict load took and left out."""

    path: Path
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def load_pretrained(model: nn.Module, path: Path) -> PretrainedLoadReport:
    """Initialise ``model`` from public pretrained weights (``f0G48k.pth``, ``f0D48k.pth``, ...).

    Tensors whose name and shape match are copied; the rest are reported, not fatal, so e.g. a
    generator pretrained with more speakers still initialises everything else.
    """
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        source = checkpoint["model"]
    elif isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("weight"), Mapping):
        source = checkpoint["weight"]
    elif isinstance(checkpoint, Mapping) and all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        source = checkpoint
    else:
        raise StageError("invalid_model", f"{Path(path).name} holds no state dict")
    source = {k.removeprefix("module."): v for k, v in source.items()}

    target = _unwrap(model)
    own = target.state_dict()
    report = PretrainedLoadReport(path=Path(path))
    usable: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key not in own:
            report.unexpected.append(key)
        elif not isinstance(tensor, torch.Tensor) or tensor.shape != own[key].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else ()
            report.mismatched.append((key, shape, tuple(own[key].shape)))
        else:
            usable[key] = tensor
    report.missing = [key for key in own if key not in source]
    target.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    log.info(
        "pretrained_loaded",
        path=str(path),
        loaded=report.loaded,
        missing=len(report.missing),
        unexpected=len(report.unexpected),
        mismatched=len(report.mismatched),
    )
    return report
