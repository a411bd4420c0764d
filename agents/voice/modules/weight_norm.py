"""Weight normalisation with the public RVC state-dict key names.

We use :func:`torch.nn.utils.parametrizations.weight_norm` (the old ``torch.nn.utils.weight_norm``
is deprecated), whose state-dict keys are ``<layer>.parametrizations.weight.original0/1``. Public
RVC checkpoints were written with the old API and name the same tensors ``<layer>.weight_g`` and
``<layer>.weight_v``. :func:`use_public_weight_norm_keys` registers hooks on a top-level module so
that ``state_dict()`` emits, and ``load_state_dict()`` accepts, the public names.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _parametrized_weight_norm

M = TypeVar("M", bound=nn.Module)

_G_SUFFIX = "parametrizations.weight.original0"
_V_SUFFIX = "parametrizations.weight.original1"


def weight_norm(module: M) -> M:
    """Weight-normalise ``module.weight`` along dim 0 (as HiFi-GAN and RVC do)."""
    return _parametrized_weight_norm(module, name="weight", dim=0)


def to_public_key(key: str) -> str:
    if key.endswith(_G_SUFFIX):
        return key[: -len(_G_SUFFIX)] + "weight_g"
    if key.endswith(_V_SUFFIX):
        return key[: -len(_V_SUFFIX)] + "weight_v"
    return key


def to_parametrized_key(key: str) -> str:
    if key.endswith(".weight_g") or key == "weight_g":
        return key[: -len("weight_g")] + _G_SUFFIX
    if key.endswith(".weight_v") or key == "weight_v":
        return key[: -len("weight_v")] + _V_SUFFIX
    return key


def _rename_in_place(state_dict: dict[str, Any], rename: Any) -> None:
    # Rebuild rather than pop/insert so the key order (and so the file layout) stays stable.
    items = [(rename(k), v) for k, v in state_dict.items()]
    state_dict.clear()
    state_dict.update(OrderedDict(items))


def _state_dict_post_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    _rename_in_place(state_dict, to_public_key)


def _load_pre_hook(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    _rename_in_place(state_dict, to_parametrized_key)


def use_public_weight_norm_keys(module: M) -> M:
    """Make ``module.state_dict()``/``load_state_dict()`` speak ``weight_g``/``weight_v``."""
    module.register_state_dict_post_hook(_state_dict_post_hook)
    module.register_load_state_dict_pre_hook(_load_pre_hook)
    return module


def normal_init_(conv: nn.Module, std: float = 0.01) -> None:
    """HiFi-GAN's N(0, std) initialisation, applied before weight norm takes the weight apart."""
    with torch.no_grad():
        conv.weight.normal_(0.0, std)
