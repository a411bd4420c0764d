"""The content encoder loads tiny HuBERT checkpoints written here in both public layouts."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from agents.voice.content import (
    _FAIRSEQ_RULES,
    _Hints,
    _infer_config,
    _rename,
    load_content_encoder,
)
from foundation.errors import StageError

DIM, LAYERS, HEADS, FF, CONV, FINAL = 32, 2, 4, 48, 16, 8
POS_KERNEL, POS_GROUPS = 16, 4
CONV_SPEC = [(CONV, 10, 5)] + [(CONV, 3, 2)] * 4 + [(CONV, 2, 2)] * 2
CONV_SPEC_TEXT = f"[({CONV},10,5)] + [({CONV},3,2)] * 4 + [({CONV},2,2)] * 2"


def fairseq_state(
    dim: int = DIM,
    layers: int = LAYERS,
    ff: int = FF,
    conv: int = CONV,
    final: int = FINAL,
    pos_kernel: int = POS_KERNEL,
    pos_groups: int = POS_GROUPS,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A HuBERT state dict in fairseq's key layout (as in hubert_base.pt), random weights."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * scale

    def norm(n: int) -> list[tuple[str, torch.Tensor]]:
        return [("weight", 1.0 + rand(n, scale=0.05)), ("bias", rand(n, scale=0.05))]

    state: dict[str, torch.Tensor] = {}
    in_ch = 1
    for i, (out_ch, kernel, _) in enumerate([(conv, k, s) for _, k, s in CONV_SPEC]):
        state[f"feature_extractor.conv_layers.{i}.0.weight"] = rand(out_ch, in_ch, kernel)
        in_ch = out_ch
    for name, t in norm(conv):
        state[f"feature_extractor.conv_layers.0.2.{name}"] = t
    for name, t in norm(conv):
        state[f"layer_norm.{name}"] = t
    state["post_extract_proj.weight"] = rand(dim, conv)
    state["post_extract_proj.bias"] = rand(dim)
    state["encoder.pos_conv.0.bias"] = rand(dim)
    state["encoder.pos_conv.0.weight_g"] = 1.0 + rand(1, 1, pos_kernel, scale=0.05)
    state["encoder.pos_conv.0.weight_v"] = rand(dim, dim // pos_groups, pos_kernel)
    for name, t in norm(dim):
        state[f"encoder.layer_norm.{name}"] = t
    for n in range(layers):
        p = f"encoder.layers.{n}."
        for proj in ("q", "k", "v", "out"):
            state[p + f"self_attn.{proj}_proj.weight"] = rand(dim, dim)
            state[p + f"self_attn.{proj}_proj.bias"] = rand(dim)
        for name, t in norm(dim):
            state[p + f"self_attn_layer_norm.{name}"] = t
        state[p + "fc1.weight"] = rand(ff, dim)
        state[p + "fc1.bias"] = rand(ff)
        state[p + "fc2.weight"] = rand(dim, ff)
        state[p + "fc2.bias"] = rand(dim)
        for name, t in norm(dim):
            state[p + f"final_layer_norm.{name}"] = t
    state["final_proj.weight"] = rand(final, dim)
    state["final_proj.bias"] = rand(final)
    state["label_embs_concat"] = rand(504, final)
    state["mask_emb"] = rand(dim)
    return state


def hf_from_fairseq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under Hugging Face HubertModel's names, renamed key by key."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        parts = key.split(".")
        if key.startswith("feature_extractor.conv_layers."):
            i = parts[2]
            sub = "conv" if parts[3] == "0" else "layer_norm"
            out[f"feature_extractor.conv_layers.{i}.{sub}.{parts[-1]}"] = t
        elif key.startswith("layer_norm."):
            out[f"feature_projection.layer_norm.{parts[-1]}"] = t
        elif key.startswith("post_extract_proj."):
            out[f"feature_projection.projection.{parts[-1]}"] = t
        elif key.startswith("encoder.pos_conv.0."):
            out[f"encoder.pos_conv_embed.conv.{parts[-1]}"] = t
        elif key.startswith("encoder.layer_norm."):
            out[key] = t
        elif key.startswith("encoder.layers."):
            n, rest = parts[2], ".".join(parts[3:])
            rest = (
                rest.replace("self_attn_layer_norm", "layer_norm")
                .replace("self_attn.", "attention.")
                .replace("fc1", "feed_forward.intermediate_dense")
                .replace("fc2", "feed_forward.output_dense")
            )
            out[f"encoder.layers.{n}.{rest}"] = t
        elif key.startswith("final_proj."):
            out[key] = t
        elif key == "mask_emb":
            out["masked_spec_embed"] = t
    return out


def write_fairseq(path: Path, state: dict[str, torch.Tensor], **extra: object) -> Path:
    args = argparse.Namespace(
        encoder_attention_heads=HEADS,
        conv_feature_layers=CONV_SPEC_TEXT,
        layer_norm_first=False,
        normalize=False,
        label_rate=50,
    )
    torch.save({"args": args, "cfg": None, "model": state, **extra}, path)
    return path


def write_hf(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["HubertModel"],
        "hidden_size": DIM,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FF,
        "conv_dim": [c for c, _, _ in CONV_SPEC],
        "conv_kernel": [k for _, k, _ in CONV_SPEC],
        "conv_stride": [s for _, _, s in CONV_SPEC],
        "do_stable_layer_norm": False,
        "feat_extract_norm": "group",
        "classifier_proj_size": FINAL,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    save_file(
        {k: v.contiguous() for k, v in hf_from_fairseq(state).items()}, folder / "model.safetensors"
    )
    return folder


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return fairseq_state()


@pytest.fixture(scope="module")
def audio() -> torch.Tensor:
    t = torch.arange(16_000) / 16_000
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.standard_normal(16_000).astype(np.float32)) * 0.05
    return 0.5 * torch.sin(2 * torch.pi * 220 * t) + noise


def test_fairseq_layout_gives_rvc_shapes_and_frame_rate(tmp_path, state, audio):
    encoder = load_content_encoder(write_fairseq(tmp_path / "hubert_base.pt", state))
    assert encoder.config.num_heads == HEADS
    assert encoder.hop == 320
    v2 = encoder.extract(audio, "v2")
    v1 = encoder.extract(audio, "v1")
    frames = (16_000 - 400) // 320 + 1  # 49: 50 frames per second, less the conv edge
    assert v2.shape == (frames, DIM)
    assert v1.shape == (frames, FINAL)
    assert torch.isfinite(v2).all() and v2.std() > 0
    # Two seconds give twice the frames (+1): the frame rate is 50/s.
    two_seconds = encoder.extract(torch.cat([audio, audio]), "v2")
    assert two_seconds.shape[0] == (32_000 - 400) // 320 + 1


def test_both_public_layouts_of_the_same_weights_give_identical_features(tmp_path, state, audio):
    fairseq = load_content_encoder(write_fairseq(tmp_path / "hubert_base.pt", state))
    hf = load_content_encoder(write_hf(tmp_path / "hubert_hf", state))
    for version in ("v1", "v2"):
        assert torch.equal(fairseq.extract(audio, version), hf.extract(audio, version))


def test_hf_single_bin_file_with_model_prefix_loads(tmp_path, state, audio):
    folder = write_hf(tmp_path / "hf", state)
    prefixed = {f"hubert.{k}": v for k, v in hf_from_fairseq(state).items()}
    torch.save(prefixed, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    from_dir = load_content_encoder(folder)
    from_file = load_content_encoder(folder / "pytorch_model.bin")
    assert torch.equal(from_dir.extract(audio), from_file.extract(audio))


def test_matches_torchaudios_own_fairseq_conversion(tmp_path, state, audio):
    """An independent mapping of the same fairseq keys (torchaudio's importer) agrees."""
    from torchaudio.models import wav2vec2_model
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    ours = load_content_encoder(write_fairseq(tmp_path / "hubert_base.pt", state))
    reference = wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=CONV_SPEC,
        extractor_conv_bias=False,
        encoder_embed_dim=DIM,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=POS_KERNEL,
        encoder_pos_conv_groups=POS_GROUPS,
        encoder_num_layers=LAYERS,
        encoder_num_heads=HEADS,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=FF,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    ).eval()
    converted = _convert_state_dict({k: v for k, v in state.items() if k != "label_embs_concat"})
    loaded = reference.load_state_dict(converted, strict=False)
    assert not loaded.missing_keys
    with torch.no_grad():
        layers, _ = reference.extract_features(audio[None])
    torch.testing.assert_close(ours.extract(audio, "v2"), layers[-1][0])


def test_real_hubert_base_sizes_are_inferred_from_shapes():
    real = fairseq_state(
        dim=768,
        layers=12,
        ff=3072,
        conv=512,
        final=256,
        pos_kernel=128,
        pos_groups=16,
        device="meta",
    )
    config = _infer_config(_rename(real, _FAIRSEQ_RULES), _Hints())
    assert config.embed_dim == 768 and config.num_layers == 12 and config.num_heads == 12
    assert config.ff_dim == 3072 and config.final_dim == 256
    assert config.pos_conv_kernel == 128 and config.pos_conv_groups == 16
    assert config.conv_layers == ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    assert config.hop == 320 and config.extractor_mode == "group_norm"
    assert config.layer_norm_first is False


def test_pickled_fairseq_config_objects_load_inert(tmp_path, state, audio, monkeypatch):
    """fairseq checkpoints pickle task dictionaries; they load as inert stand-ins."""
    module = types.ModuleType("fairseq.data.dictionary")

    class Dictionary:
        def __init__(self) -> None:
            self.symbols = ["<s>", "<pad>"]

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    module.Dictionary = Dictionary  # type: ignore[attr-defined]
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.setitem(sys.modules, name, module)
    path = write_fairseq(
        tmp_path / "with_task.pt", state, task_state={"dictionaries": [Dictionary()]}
    )
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.delitem(sys.modules, name)

    encoder = load_content_encoder(path)
    assert encoder.extract(audio).shape[1] == DIM


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_needing_code_is_refused(tmp_path, state):
    path = tmp_path / "evil.pt"
    torch.save({"model": state, "hook": _Payload()}, path)
    with pytest.raises(StageError) as err:
        load_content_encoder(path)
    assert err.value.code == "unsafe_model"


def test_missing_and_invalid_checkpoints(tmp_path):
    with pytest.raises(StageError) as err:
        load_content_encoder(tmp_path / "nope.pt")
    assert err.value.code == "model_not_found"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(StageError) as err:
        load_content_encoder(garbage)
    assert err.value.code == "invalid_model"
    other = tmp_path / "other.pt"
    torch.save({"model": {"some.weight": torch.zeros(2)}}, other)
    with pytest.raises(StageError) as err:
        load_content_encoder(other)
    assert err.value.code == "invalid_model"


def test_audio_shorter_than_one_frame_gives_no_frames(tmp_path, state):
    encoder = load_content_encoder(write_fairseq(tmp_path / "hubert_base.pt", state))
    assert encoder.extract(torch.zeros(399), "v2").shape == (0, DIM)
    assert encoder.extract(torch.zeros(400), "v2").shape == (1, DIM)
