"""Synthesizer, discriminator and checkpoint formats of the shared RVC package (agents/voice)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from agents.voice.checkpoint import (
    load_pretrained,
    load_training_checkpoint,
    load_voice_model,
    save_inference_model,
    save_training_checkpoint,
)
from agents.voice.configs import PHONE_DIMS, SynthesizerConfig, get_config
from agents.voice.discriminator import MultiPeriodDiscriminator
from agents.voice.modules.attentions import RelativeSelfAttention
from agents.voice.synthesizer import Synthesizer, build_synthesizer
from foundation.errors import StageError

VARIANTS = [("v1", True), ("v1", False), ("v2", True), ("v2", False)]


def _inputs(version: str, frames: int, batch: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "phone": torch.randn(batch, frames, PHONE_DIMS[version], generator=gen),
        "phone_lengths": torch.tensor([frames, frames - 3][:batch]),
        "pitch": torch.randint(1, 256, (batch, frames), generator=gen),
        "nsff0": 100 + 200 * torch.rand(batch, frames, generator=gen),
        "sid": torch.zeros(batch, dtype=torch.long),
    }


@pytest.mark.parametrize(("version", "f0"), VARIANTS)
def test_tiny_forward_and_infer_shapes(version: str, f0: bool) -> None:
    config = get_config(version, "40k", "tiny")  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_synthesizer(config.synthesizer, version, f0)  # type: ignore[arg-type]
    hop = config.audio.hop_length
    frames = 20
    x = _inputs(version, frames)
    spec = torch.rand(2, config.synthesizer.spec_channels, frames)
    out = model(
        x["phone"],
        x["phone_lengths"],
        x["pitch"] if f0 else None,
        x["nsff0"] if f0 else None,
        spec,
        x["phone_lengths"],
        x["sid"],
    )
    segment = config.synthesizer.segment_frames
    assert out.audio.shape == (2, 1, segment * hop)
    assert out.ids_slice.shape == (2,)
    # every slice lies inside the item's valid frames
    assert bool(((out.ids_slice + segment) <= x["phone_lengths"]).all())
    inter = config.synthesizer.inter_channels
    for tensor in (out.z, out.z_p, out.m_p, out.logs_p, out.m_q, out.logs_q):
        assert tensor.shape == (2, inter, frames)
    assert out.x_mask.shape == out.z_mask.shape == (2, 1, frames)
    assert torch.isfinite(out.audio).all()

    model.eval()
    audio = model.infer(
        x["phone"],
        x["phone_lengths"],
        x["pitch"] if f0 else None,
        x["nsff0"] if f0 else None,
        x["sid"],
    )
    assert audio.shape == (2, 1, frames * hop)
    assert float(audio.abs().max()) <= 1.0  # tanh output
    # real-time mode renders only the newest half of the frames
    half = model.infer(
        x["phone"][:1],
        torch.tensor([frames]),
        x["pitch"][:1] if f0 else None,
        x["nsff0"][:1] if f0 else None,
        x["sid"][:1],
        rate=0.5,
    )
    assert half.shape == (1, 1, (frames - int(frames * 0.5)) * hop)


def test_pitch_guided_model_needs_f0() -> None:
    config = get_config("v2", "40k", "tiny")
    model = build_synthesizer(config.synthesizer, "v2", True).eval()
    x = _inputs("v2", 10, batch=1)
    with pytest.raises(ValueError, match="nsff0"):
        model.infer(x["phone"], torch.tensor([10]), x["pitch"], None, x["sid"])


def test_nsf_output_follows_the_pitch() -> None:
    """The sine source makes an untrained NSF decoder's output differ when only f0 changes."""
    config = get_config("v2", "40k", "tiny")
    torch.manual_seed(0)
    model = build_synthesizer(config.synthesizer, "v2", True).eval()
    x = _inputs("v2", 12, batch=1)
    outputs = []
    for hz in (110.0, 440.0):
        torch.manual_seed(1)
        outputs.append(
            model.infer(
                x["phone"], torch.tensor([12]), x["pitch"], torch.full((1, 12), hz), x["sid"]
            )
        )
    assert not torch.allclose(outputs[0], outputs[1])


def test_relative_attention_matches_its_definition() -> None:
    """Windowed relative attention against an explicit loop over query/key pairs."""
    torch.manual_seed(3)
    channels, heads, window, length = 8, 2, 3, 9
    attn = RelativeSelfAttention(channels, heads, window_size=window).eval()
    x = torch.randn(1, channels, length)
    mask = torch.ones(1, 1, length, length)
    mask[..., 7:] = 0  # two padded key positions
    got = attn(x, mask)

    d = channels // heads
    q = attn.conv_q(x).view(heads, d, length) / math.sqrt(d)
    k = attn.conv_k(x).view(heads, d, length)
    v = attn.conv_v(x).view(heads, d, length)
    ek, ev = attn.emb_rel_k[0], attn.emb_rel_v[0]
    out = torch.zeros(heads, d, length)
    for h in range(heads):
        for i in range(length):
            scores = torch.empty(length)
            for j in range(length):
                s = q[h, :, i] @ k[h, :, j]
                if abs(j - i) <= window:
                    s = s + q[h, :, i] @ ek[j - i + window]
                scores[j] = s if mask[0, 0, i, j] else -1e4
            p = torch.softmax(scores, 0)
            for j in range(length):
                term = v[h, :, j]
                if abs(j - i) <= window:
                    term = term + ev[j - i + window]
                out[h, :, i] += p[j] * term
    expected = attn.conv_o(out.reshape(1, channels, length))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# --- public checkpoint layout ---------------------------------------------------------------

# RVC WebUI's exporter writes exactly this list for a v2 48k model.
PUBLIC_V2_48K_CONFIG = [
    1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    [12, 10, 2, 2], 512, [24, 20, 4, 4], 109, 256, 48000,
]  # fmt: skip


def test_full_v2_48k_public_layout_loads_strictly(tmp_path: Path) -> None:
    config = get_config("v2", "48k")
    assert config.synthesizer.to_public_list() == PUBLIC_V2_48K_CONFIG
    assert SynthesizerConfig.from_public_list(PUBLIC_V2_48K_CONFIG).upsample_rates == (12, 10, 2, 2)

    torch.manual_seed(0)
    model = build_synthesizer(config.synthesizer, "v2", True)
    state = model.state_dict()
    # public names and shapes, spot-checked against RVC's SynthesizerTrnMs768NSFsid
    assert not any("parametrizations" in key for key in state)
    expected_shapes = {
        "enc_p.emb_phone.weight": (192, 768),
        "enc_p.emb_pitch.weight": (256, 192),
        "enc_p.encoder.attn_layers.5.emb_rel_k": (1, 21, 96),
        "enc_p.encoder.norm_layers_2.5.gamma": (192,),
        "enc_p.proj.weight": (384, 192, 1),
        "dec.conv_pre.weight": (512, 192, 7),
        "dec.ups.0.weight_g": (512, 1, 1),
        "dec.ups.0.weight_v": (512, 256, 24),
        "dec.noise_convs.0.weight": (256, 1, 80),
        "dec.noise_convs.3.weight": (32, 1, 1),
        "dec.resblocks.11.convs2.2.weight_v": (32, 32, 11),
        "dec.m_source.l_linear.weight": (1, 1),
        "dec.conv_post.weight": (1, 32, 7),
        "dec.cond.weight": (512, 256, 1),
        "flow.flows.6.enc.cond_layer.weight_v": (1152, 256, 1),
        "flow.flows.0.post.weight": (96, 192, 1),
        "enc_q.pre.weight": (192, 1025, 1),
        "enc_q.enc.in_layers.15.weight_v": (384, 192, 5),
        "emb_g.weight": (109, 256),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "dec.conv_post.bias" not in state
    assert not any(key.startswith("flow.flows.1.") for key in state)  # flips hold no weights
    assert len(state) == 560  # same count as RVC's model

    # as a public pretrained generator file ({"model": state dict}): every tensor fits
    pretrained = tmp_path / "f0G48k.pth"
    torch.save({"model": state}, pretrained)
    fresh = build_synthesizer(config.synthesizer, "v2", True)
    report = load_pretrained(fresh, pretrained)
    assert report.complete and report.loaded == 560
    assert torch.equal(fresh.state_dict()["dec.ups.0.weight_v"], state["dec.ups.0.weight_v"])

    # as an inference model: enc_q dropped, strict load, metadata as RVC writes it
    path = save_inference_model(model, tmp_path / "voice.pth", version="v2", info="0epoch")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"weight", "config", "info", "sr", "f0", "version"}
    assert raw["config"] == PUBLIC_V2_48K_CONFIG
    assert (raw["sr"], raw["f0"], raw["version"]) == ("48k", 1, "v2")
    assert not any(key.startswith("enc_q.") for key in raw["weight"])
    assert all(t.dtype == torch.float16 for t in raw["weight"].values())
    voice = load_voice_model(path)
    assert (voice.sr, voice.tgt_sr, voice.f0, voice.version) == (48000, 48000, True, "v2")
    assert voice.speaker_count == 109 and not voice.synthesizer.training
    assert not voice.synthesizer.has_posterior


def test_full_v2_discriminator_public_layout(tmp_path: Path) -> None:
    disc = MultiPeriodDiscriminator.from_config(get_config("v2", "48k").discriminator)
    state = disc.state_dict()
    assert len(disc.discriminators) == 9  # scale + periods 2, 3, 5, 7, 11, 17, 23, 37
    assert tuple(state["discriminators.0.convs.4.weight_v"].shape) == (1024, 4, 41)
    assert tuple(state["discriminators.8.convs.0.weight_v"].shape) == (32, 1, 5, 1)
    assert tuple(state["discriminators.8.conv_post.weight_g"].shape) == (1, 1, 1, 1)
    path = tmp_path / "f0D48k.pth"
    torch.save({"model": state}, path)
    report = load_pretrained(
        MultiPeriodDiscriminator.from_config(get_config("v2", "48k").discriminator), path
    )
    assert report.complete
    # a v1 discriminator (6 periods) takes what fits and reports the rest
    v1 = MultiPeriodDiscriminator.from_config(get_config("v1", "48k").discriminator)
    partial = load_pretrained(v1, path)
    assert partial.loaded > 0 and partial.unexpected
    assert all(
        key.startswith(("discriminators.7.", "discriminators.8.")) for key in partial.unexpected
    )


def test_weight_norm_keys_round_trip_with_old_api_layout() -> None:
    """A state dict in the old torch.nn.utils.weight_norm layout computes the same weights."""
    config = get_config("v2", "40k", "tiny")
    torch.manual_seed(0)
    a = build_synthesizer(config.synthesizer, "v2", True)
    b = build_synthesizer(config.synthesizer, "v2", True)
    b.load_state_dict(a.state_dict(), strict=True)
    g, v = a.state_dict()["dec.ups.0.weight_g"], a.state_dict()["dec.ups.0.weight_v"]
    norm = v.flatten(1).norm(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(b.dec.ups[0].weight, v * g / norm)


# --- inference checkpoint round trip and refusal --------------------------------------------


def _tiny(version: str = "v2", f0: bool = True, seed: int = 0) -> Synthesizer:
    torch.manual_seed(seed)
    config = get_config(version, "40k", "tiny")  # type: ignore[arg-type]
    return build_synthesizer(config.synthesizer, version, f0).eval()  # type: ignore[arg-type]


def _render(model: Synthesizer, version: str, f0: bool) -> torch.Tensor:
    x = _inputs(version, 16, batch=1)
    torch.manual_seed(42)
    return model.infer(
        x["phone"],
        torch.tensor([16]),
        x["pitch"] if f0 else None,
        x["nsff0"] if f0 else None,
        x["sid"],
    )


@pytest.mark.parametrize(("version", "f0"), VARIANTS)
def test_export_load_round_trip_is_exact(tmp_path: Path, version: str, f0: bool) -> None:
    model = _tiny(version, f0)
    path = save_inference_model(model, tmp_path / "m.pth", version=version, precision="fp32")  # type: ignore[arg-type]
    voice = load_voice_model(path)
    assert (voice.f0, voice.version, voice.sr) == (f0, version, 40000)
    original = {k: v for k, v in model.state_dict().items() if not k.startswith("enc_q.")}
    loaded = voice.synthesizer.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    assert torch.equal(_render(voice.synthesizer, version, f0), _render(model, version, f0))


def test_fp16_export_keeps_half_precision_weights(tmp_path: Path) -> None:
    model = _tiny()
    path = save_inference_model(model, tmp_path / "m.pth", version="v2")
    voice = load_voice_model(path)
    for key, value in voice.synthesizer.state_dict().items():
        assert torch.equal(value, model.state_dict()[key].half().float()), key
    first = _render(voice.synthesizer, "v2", True)
    again = _render(load_voice_model(path).synthesizer, "v2", True)
    assert torch.equal(first, again)


class _NotAWeight:  # any class: loading it would need pickled code
    def __init__(self) -> None:
        self.payload = "x"


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "evil.pth"
    torch.save({"weight": model.state_dict(), "config": [], "extra": _NotAWeight()}, path)
    with pytest.raises(StageError) as err:
        load_voice_model(path)
    assert err.value.code == "unsafe_model"


@pytest.mark.parametrize(
    "payload",
    [
        {"config": [1, 2, 3]},  # no weights
        {"weight": {"emb_g.weight": torch.zeros(1, 8)}, "config": [1, 2]},  # short config
        ["not", "a", "dict"],
    ],
)
def test_wrong_structure_is_invalid_model(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    with pytest.raises(StageError) as err:
        load_voice_model(path)
    assert err.value.code == "invalid_model"


def test_weights_that_do_not_fit_the_config_are_invalid(tmp_path: Path) -> None:
    model = _tiny()
    path = save_inference_model(model, tmp_path / "m.pth", version="v2")
    raw = torch.load(path, weights_only=True)
    raw["config"][3] = 24  # hidden_channels no longer matches the tensors
    torch.save(raw, path)
    with pytest.raises(StageError) as err:
        load_voice_model(path)
    assert err.value.code == "invalid_model"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04not really a pickle" * 10)
    with pytest.raises(StageError) as err:
        load_voice_model(garbage)
    assert err.value.code == "invalid_model"
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"weight": 1}))
    with pytest.raises(StageError) as err:
        load_voice_model(plain)
    assert err.value.code == "invalid_model"
    with pytest.raises(StageError) as err:
        load_voice_model(tmp_path / "absent.pth")
    assert err.value.code == "model_not_found"


def test_training_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _tiny().train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
    path = save_training_checkpoint(
        tmp_path / "G_12.pth", model, optimizer, 1e-4, epoch=3, global_step=12
    )
    raw = torch.load(path, weights_only=True)
    assert {"model", "iteration", "optimizer", "learning_rate"} <= set(raw)
    other = _tiny(seed=5).train()
    other_opt = torch.optim.AdamW(other.parameters(), 1e-4)
    state = load_training_checkpoint(path, other, other_opt)
    assert (state.epoch, state.global_step, state.learning_rate) == (3, 12, 1e-4)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )
    assert other_opt.state_dict()["state"][0]["step"] == 1


def test_long_pieces_attend_a_block_of_queries_at_a_time_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents.voice.modules import attentions

    torch.manual_seed(0)
    layer = attentions.RelativeSelfAttention(192, 2, window_size=10).eval()
    lengths = torch.tensor([1300, 1100])  # past two block edges; the second one padded
    x = torch.randn(2, 192, 1300)
    x_mask = (torch.arange(1300)[None, :] < lengths[:, None]).unsqueeze(1).float()
    attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
    with torch.no_grad():
        blocked = layer(x, attn_mask)
        monkeypatch.setattr(attentions, "QUERY_BLOCK", 10**6)
        whole = layer(x, attn_mask)
    assert blocked.shape == whole.shape
    assert torch.allclose(blocked, whole, atol=1e-5, rtol=0) and blocked.abs().max() > 0.1
