"""The content encoder: HuBERT-base / ContentVec features for RVC, in torch (no fairseq).

The network is torchaudio's wav2vec 2.0 / HuBERT model (``torchaudio.models.wav2vec2_model``)
plus HuBERT's ``final_proj``. Two public checkpoint layouts are mapped onto it:

* fairseq (``hubert_base.pt``, ContentVec ``checkpoint_best_legacy_500.pt``): a dict with
  ``model`` (the state dict: ``feature_extractor.conv_layers.0.0.weight``,
  ``encoder.layers.N.self_attn.k_proj.weight``, ``encoder.pos_conv.0.weight_g``, ``final_proj``
  ...) and ``args`` (an argparse ``Namespace``) and/or ``cfg`` (a dict);
* Hugging Face ``HubertModel`` (a folder with ``model.safetensors`` or ``pytorch_model.bin`` and
  ``config.json``, or one such file): ``feature_extractor.conv_layers.0.conv.weight``,
  ``encoder.layers.N.attention.k_proj.weight``, ``encoder.pos_conv_embed.conv.weight_g`` ...

Sizes (width, depth, convolution stack, FFN width, final projection) are read from the tensor
shapes, so the real 95M-parameter model and tiny test models load through the same path; the few
facts shapes cannot tell (attention heads, conv strides, layer-norm order) come from the
checkpoint's config when it has one and HuBERT-base's values otherwise.

Untrusted files: everything is read with ``torch.load(weights_only=True)`` (or safetensors).
fairseq checkpoints pickle their training configuration: ``args`` is an ``argparse.Namespace``
(allowed: a plain attribute bag), and some also carry fairseq/omegaconf objects (task
dictionaries, ``DictConfig``) that name plain types such as ``dict``. Those classes are not
importable here and must never run, so they (and those plain types) are mapped to
:class:`_InertConfigObject`, which only stores what it is given; only the ``model`` state dict
and simple config values (heads, strides, normalisation) are read. Any other global the file asks
for (a function, a class from elsewhere) is refused as ``unsafe_model``.

RVC's use: v2 takes the output of transformer layer 12 (768-d), v1 the output of layer 9 through
``final_proj`` (256-d); both at 50 frames per second of 16 kHz audio (hop 320).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.models import wav2vec2_model

from foundation.checkpoint import load_checkpoint
from foundation.errors import StageError
from foundation.logging import get_logger

log = get_logger(__name__)

FeatureVersion = Literal["v1", "v2"]
V1_LAYER = 9
V2_LAYER = 12
SAMPLE_RATE = 16_000

# Stride of each feature-extractor conv, by kernel width, for HuBERT/wav2vec2's standard stack
# [(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2 when the checkpoint does not say.
_DEFAULT_STRIDE_BY_KERNEL = {10: 5, 8: 4, 4: 2, 3: 2, 2: 2}
# Modules whose pickled objects are configuration only (never weights): loaded inert.
_METADATA_MODULES = ("fairseq.", "omegaconf.", "typing.")
# Plain types such configs refer to (omegaconf records ``object_type=dict`` ...). Calling code
# such as ``builtins.eval``/``getattr``/``print`` is never on this list.
_METADATA_TYPES = frozenset(
    f"builtins.{name}"
    for name in ("dict", "list", "tuple", "str", "int", "float", "bool", "object")
)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    extractor_mode: Literal["group_norm", "layer_norm"]
    conv_layers: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride)
    conv_bias: bool
    embed_dim: int
    pos_conv_kernel: int
    pos_conv_groups: int
    num_layers: int
    num_heads: int
    ff_dim: int
    layer_norm_first: bool
    final_dim: int | None
    normalize_waveform: bool = False

    @property
    def hop(self) -> int:
        hop = 1
        for _, _, stride in self.conv_layers:
            hop *= stride
        return hop


@dataclass
class _Hints:
    """Config facts taken from a checkpoint's own config, when it has one."""

    num_heads: int | None = None
    strides: list[int] | None = None
    layer_norm_first: bool | None = None
    normalize: bool | None = None


def _infer_config(state: Mapping[str, torch.Tensor], hints: _Hints) -> EncoderConfig:
    """Sizes from the (torchaudio-named) state dict's shapes; the rest from ``hints``."""
    conv_ids = sorted(
        {
            int(m.group(1))
            for k in state
            if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))
        }
    )
    if not conv_ids or "encoder.feature_projection.projection.weight" not in state:
        raise StageError("invalid_model", "not a HuBERT/ContentVec checkpoint (no conv stack)")
    conv_layers = []
    for i in conv_ids:
        out_channels, _, kernel = state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape
        if hints.strides is not None and len(hints.strides) == len(conv_ids):
            stride = hints.strides[i]
        else:
            stride = _DEFAULT_STRIDE_BY_KERNEL.get(int(kernel), max(1, int(kernel) // 2))
        conv_layers.append((int(out_channels), int(kernel), int(stride)))
    every_layer_normed = all(
        f"feature_extractor.conv_layers.{i}.layer_norm.weight" in state for i in conv_ids
    )
    embed_dim = int(state["encoder.feature_projection.projection.weight"].shape[0])
    pos_v = state["encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"]
    layer_ids = {
        int(m.group(1))
        for k in state
        if (m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k))
    }
    final = state.get("final_proj.weight")
    return EncoderConfig(
        extractor_mode="layer_norm" if every_layer_normed and len(conv_ids) > 1 else "group_norm",
        conv_layers=tuple(conv_layers),
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        embed_dim=embed_dim,
        pos_conv_kernel=int(pos_v.shape[2]),
        pos_conv_groups=embed_dim // int(pos_v.shape[1]),
        num_layers=len(layer_ids),
        # HuBERT/wav2vec2 use 64-d heads; base models are post-LN, large ones pre-LN.
        num_heads=hints.num_heads or max(1, embed_dim // 64),
        ff_dim=int(
            state["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape[0]
        ),
        layer_norm_first=(
            hints.layer_norm_first if hints.layer_norm_first is not None else embed_dim > 768
        ),
        final_dim=int(final.shape[0]) if final is not None else None,
        normalize_waveform=bool(hints.normalize),
    )


def _parse_conv_feature_layers(spec: Any) -> list[int] | None:
    """Strides from fairseq's ``conv_feature_layers`` string, e.g.
    ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"`` (parsed, never evaluated)."""
    if not isinstance(spec, str):
        return None
    strides: list[int] = []
    for part in spec.split("+"):
        m = re.fullmatch(r"\s*\[(.*)\]\s*(?:\*\s*(\d+))?\s*", part)
        if not m:
            return None
        triples = re.findall(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)", m.group(1))
        if not triples:
            return None
        strides.extend([int(t[2]) for t in triples] * int(m.group(2) or 1))
    return strides


def _fairseq_hints(checkpoint: Mapping[str, Any]) -> _Hints:
    model_cfg: dict[str, Any] = {}
    task_cfg: dict[str, Any] = {}
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace):
        model_cfg = task_cfg = vars(args)
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, Mapping):
        if isinstance(cfg.get("model"), Mapping):
            model_cfg = dict(cfg["model"])
        if isinstance(cfg.get("task"), Mapping):
            task_cfg = dict(cfg["task"])
    heads = model_cfg.get("encoder_attention_heads")
    ln_first = model_cfg.get("layer_norm_first")
    normalize = task_cfg.get("normalize")
    return _Hints(
        num_heads=int(heads) if isinstance(heads, int) else None,
        strides=_parse_conv_feature_layers(model_cfg.get("conv_feature_layers")),
        layer_norm_first=ln_first if isinstance(ln_first, bool) else None,
        normalize=normalize if isinstance(normalize, bool) else None,
    )


def _hf_hints(folder: Path | None) -> _Hints:
    hints = _Hints()
    if folder is None:
        return hints
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        hints.num_heads = config.get("num_attention_heads")
        if isinstance(config.get("conv_stride"), list):
            hints.strides = [int(s) for s in config["conv_stride"]]
        if isinstance(config.get("do_stable_layer_norm"), bool):
            hints.layer_norm_first = config["do_stable_layer_norm"]
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        do_normalize = json.loads(preprocessor.read_text()).get("do_normalize")
        if isinstance(do_normalize, bool):
            hints.normalize = do_normalize
    return hints


# --------------------------------------------------------------------------------------------------
# Key mapping: public layouts -> torchaudio names (+ final_proj)
# --------------------------------------------------------------------------------------------------

_POS = "encoder.transformer.pos_conv_embed.conv."
_POS_G = _POS + "parametrizations.weight.original0"
_POS_V = _POS + "parametrizations.weight.original1"
_LAYER = r"encoder.transformer.layers.\1."

# (pattern, replacement template) pairs; a key matching none is reported and left out.
_FAIRSEQ_RULES: list[tuple[str, str]] = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.conv.\2",
    ),
    # group-norm mode: Sequential(conv, dropout, GroupNorm, GELU) on the first layer only
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    # layer-norm mode: Sequential(conv, dropout, Sequential(T, LayerNorm, T), GELU)
    (
        r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.bias", _POS + "bias"),
    (r"encoder\.pos_conv\.0\.(weight_g|parametrizations\.weight\.original0)", _POS_G),
    (r"encoder\.pos_conv\.0\.(weight_v|parametrizations\.weight\.original1)", _POS_V),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
        _LAYER + r"attention.\2_proj.\3",
    ),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", _LAYER + r"layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", _LAYER + r"feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", _LAYER + r"feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", _LAYER + r"final_layer_norm.\2"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
]

_HF_RULES: list[tuple[str, str]] = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)",
        r"feature_extractor.conv_layers.\1.\2.\3",
    ),
    (
        r"feature_projection\.(layer_norm|projection)\.(weight|bias)",
        r"encoder.feature_projection.\1.\2",
    ),
    (r"encoder\.pos_conv_embed\.conv\.bias", _POS + "bias"),
    (r"encoder\.pos_conv_embed\.conv\.(weight_g|parametrizations\.weight\.original0)", _POS_G),
    (r"encoder\.pos_conv_embed\.conv\.(weight_v|parametrizations\.weight\.original1)", _POS_V),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (
        r"encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.(weight|bias)",
        _LAYER + r"attention.\2_proj.\3",
    ),
    (r"encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm)\.(weight|bias)", _LAYER + r"\2.\3"),
    (
        r"encoder\.layers\.(\d+)\.feed_forward\.(intermediate_dense|output_dense)\.(weight|bias)",
        _LAYER + r"feed_forward.\2.\3",
    ),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
]

# Pretraining-only tensors that feature extraction never uses.
_IGNORED = re.compile(r"^(mask_emb|masked_spec_embed|label_embs\w*)$")


def _rename(
    state: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]
) -> dict[str, torch.Tensor]:
    compiled = [(re.compile(pattern + "$"), target) for pattern, target in rules]
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        for pattern, target in compiled:
            if m := pattern.match(key):
                renamed[m.expand(target)] = tensor
                break
        else:
            if not _IGNORED.search(key):
                unknown.append(key)
    if unknown:
        log.warning("content_encoder_unused_keys", count=len(unknown), first=unknown[:5])
    return renamed


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


# --------------------------------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------------------------------


class _InertConfigObject:
    """Stands in for a pickled fairseq/omegaconf config object: keeps its arguments and state,
    runs nothing. Only ever created while unpickling with ``weights_only``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, allowing ``argparse.Namespace`` and mapping pickled
    fairseq/omegaconf configuration classes to inert stand-ins; anything else that would need
    pickled code is ``StageError('unsafe_model')``."""
    try:
        return load_checkpoint(path, allowed=[argparse.Namespace])
    except StageError as exc:
        if exc.code != "unsafe_model":
            raise
        first_error = exc

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        unsafe = []
    blocked = [
        name
        for name in unsafe
        if not name.startswith(_METADATA_MODULES) and name not in _METADATA_TYPES
    ]
    if blocked or not unsafe:
        raise StageError(
            "unsafe_model",
            f"{path.name} needs pickled code to load ({', '.join(blocked[:3]) or 'unknown'})",
        ) from first_error
    stand_ins: list[Any] = [argparse.Namespace] + [(_InertConfigObject, name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise StageError("unsafe_model", f"{path.name} needs pickled code to load") from exc
    log.info("content_encoder_inert_config", path=path.name, classes=unsafe[:10])
    return checkpoint


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise StageError("invalid_model", f"{path.name} is not a safetensors file") from exc
    state = safe_torch_load(path)
    if not isinstance(state, Mapping):
        raise StageError("invalid_model", f"{path.name} does not hold a state dict")
    return dict(state)


def _tensors_only(state: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise StageError("invalid_model", f"{name} holds no weights")
    return tensors


def _is_hf_layout(state: Mapping[str, Any]) -> bool:
    return any(
        re.match(r"(hubert\.)?(feature_projection\.|encoder\.layers\.\d+\.attention\.)", k)
        for k in state
    )


# --------------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------------


class ContentEncoder(nn.Module):
    """HuBERT/ContentVec: 16 kHz audio -> content features (v2: 768-d, v1: 256-d), 50 per s."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = wav2vec2_model(
            extractor_mode=config.extractor_mode,
            extractor_conv_layer_config=list(config.conv_layers),
            extractor_conv_bias=config.conv_bias,
            encoder_embed_dim=config.embed_dim,
            encoder_projection_dropout=0.0,
            encoder_pos_conv_kernel=config.pos_conv_kernel,
            encoder_pos_conv_groups=config.pos_conv_groups,
            encoder_num_layers=config.num_layers,
            encoder_num_heads=config.num_heads,
            encoder_attention_dropout=0.0,
            encoder_ff_interm_features=config.ff_dim,
            encoder_ff_interm_dropout=0.0,
            encoder_dropout=0.0,
            encoder_layer_norm_first=config.layer_norm_first,
            encoder_layer_drop=0.0,
            aux_num_out=None,
        )
        self.final_proj = (
            nn.Linear(config.embed_dim, config.final_dim) if config.final_dim is not None else None
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def hop(self) -> int:
        """Input samples per output frame (320 for HuBERT: 50 frames/s at 16 kHz)."""
        return self.config.hop

    def feature_dim(self, version: FeatureVersion) -> int:
        if version == "v1":
            if self.config.final_dim is None:
                raise StageError("invalid_model", "this encoder has no final_proj (v1 features)")
            return self.config.final_dim
        return self.config.embed_dim

    def output_layer(self, version: FeatureVersion) -> int:
        """1-based transformer layer RVC reads (capped at the model's depth)."""
        return min(V1_LAYER if version == "v1" else V2_LAYER, self.config.num_layers)

    def extract(self, audio16k: torch.Tensor, version: FeatureVersion = "v2") -> torch.Tensor:
        """Features of mono 16 kHz audio ``(T,)``: ``(frames, 768 | 256)`` float32 on the
        encoder's device, ``frames = (T - 400) // 320 + 1`` for HuBERT's conv stack."""
        if version not in ("v1", "v2"):
            raise ValueError(f"feature version must be 'v1' or 'v2', not {version!r}")
        dim = self.feature_dim(version)
        audio = torch.as_tensor(audio16k, dtype=torch.float32, device=self.device).reshape(1, -1)
        receptive = self._receptive_field()
        if audio.shape[1] < receptive:
            return torch.zeros(0, dim, device=self.device)
        if self.config.normalize_waveform:
            audio = F.layer_norm(audio, audio.shape)
        # no_grad, not inference_mode: callers may edit the features in place afterwards.
        with torch.no_grad():
            layers, _ = self.model.extract_features(audio, num_layers=self.output_layer(version))
            features = layers[-1]
            if version == "v1":
                assert self.final_proj is not None
                features = self.final_proj(features)
        return features[0].float().clone()

    def _receptive_field(self) -> int:
        size = 1
        for _, kernel, stride in reversed(self.config.conv_layers):
            size = (size - 1) * stride + kernel
        return size

    def load_mapped(self, state: Mapping[str, torch.Tensor], name: str) -> None:
        """Load a state dict in torchaudio's names (+ ``final_proj``), checking every tensor."""
        state = {k if k.startswith("final_proj.") else f"model.{k}": v for k, v in state.items()}
        wanted = self.state_dict()
        missing = [k for k in wanted if k not in state]
        shape_errors = [
            k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)
        ]
        if missing or shape_errors:
            raise StageError(
                "invalid_model",
                f"{name}: missing {missing[:3]} / mismatched {shape_errors[:3]} weights",
            )
        self.load_state_dict({k: state[k] for k in wanted}, strict=True)


def _build(state: dict[str, torch.Tensor], hints: _Hints, name: str) -> ContentEncoder:
    config = _infer_config(state, hints)
    encoder = ContentEncoder(config)
    encoder.load_mapped(state, name)
    return encoder.eval()


def load_content_encoder(path: Path | str, device: str = "cpu") -> ContentEncoder:
    """Load a HuBERT/ContentVec checkpoint (fairseq ``.pt``, or a Hugging Face folder/file)."""
    path = Path(path)
    if not path.exists():
        raise StageError(
            "model_not_found",
            f"HuBERT/ContentVec checkpoint not found at {path} (SINGTOME_HUBERT_PATH)",
        )
    if path.is_dir():
        weights = next(
            (path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()),
            None,
        )
        if weights is None:
            raise StageError(
                "model_not_found", f"{path} has no model.safetensors or pytorch_model.bin"
            )
        state = _strip_prefix(_tensors_only(_read_tensors(weights), weights.name), "hubert.")
        encoder = _build(_rename(state, _HF_RULES), _hf_hints(path), weights.name)
    else:
        loaded = _read_tensors(path)
        if isinstance(loaded.get("model"), Mapping):  # a fairseq checkpoint
            state = _tensors_only(loaded["model"], path.name)
            encoder = _build(_rename(state, _FAIRSEQ_RULES), _fairseq_hints(loaded), path.name)
        else:
            state = _strip_prefix(_tensors_only(loaded, path.name), "hubert.")
            if _is_hf_layout(state):
                encoder = _build(_rename(state, _HF_RULES), _hf_hints(path.parent), path.name)
            else:  # a bare fairseq state dict
                encoder = _build(_rename(state, _FAIRSEQ_RULES), _Hints(), path.name)
    log.info(
        "content_encoder_loaded",
        path=str(path),
        dim=encoder.config.embed_dim,
        layers=encoder.config.num_layers,
        final_dim=encoder.config.final_dim,
    )
    return encoder.to(device)
