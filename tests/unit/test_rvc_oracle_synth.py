"""Oracle: our synthesizers compute RVC's function, output for output.

The reference is ``rvc==0.3.5``'s ``rvc/lib/infer_pack/models.py`` (see tests/rvc_reference.py).
Both models hold the same random weights; with the same seed they draw the same prior and
excitation noise, so the audio must agree to float rounding. Every published variant (v1/v2 ×
32k/40k/48k × pitch/no pitch) is checked with the real layer structure at narrow widths; a few
run at the real sizes too. Any change to the synthesizer (speed work included) must keep these.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from agents.voice.configs import PHONE_DIMS, SynthesizerConfig, get_config
from agents.voice.synthesizer import build_synthesizer
from tests.rvc_reference import reference_infer, reference_synthesizer

VARIANTS = [
    (version, rate, f0) for version in ("v1", "v2") for rate in ("32k", "40k", "48k")
    for f0 in (True, False)
]  # fmt: skip
# One per version, rate and pitch mode at the published sizes (v2 40k f0 is the default voice).
FULL_SIZE = [("v2", "40k", True), ("v1", "48k", True), ("v2", "32k", False)]
ATOL = 2e-5  # float32 rounding of a tanh output in [-1, 1]


def narrow(config: SynthesizerConfig) -> SynthesizerConfig:
    """The published structure (upsampling, kernels, resblocks, layers) at small widths."""
    return replace(
        config,
        inter_channels=16,
        hidden_channels=16,
        filter_channels=32,
        upsample_initial_channel=64,
        spk_embed_dim=3,
        gin_channels=8,
    )


def _inputs(version: str, frames: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A batch of two of different lengths; the pitch track has unvoiced stretches."""
    gen = torch.Generator().manual_seed(seed)
    phone = torch.randn(2, frames, PHONE_DIMS[version], generator=gen)
    lengths = torch.tensor([frames, frames - 7])
    nsff0 = 80 + 600 * torch.rand(2, frames, generator=gen)
    nsff0[:, 5:11] = 0.0
    nsff0[1, -4:] = 0.0
    pitch = torch.randint(1, 256, (2, frames), generator=gen)
    sid = torch.tensor([0, 2 if phone.shape[0] > 1 else 0]) % 3
    return phone, lengths, pitch, nsff0, sid


def _ours_infer(model: torch.nn.Module, args: tuple[torch.Tensor, ...], f0: bool) -> torch.Tensor:
    phone, lengths, pitch, nsff0, sid = args
    with torch.no_grad():
        return model.infer(phone, lengths, pitch if f0 else None, nsff0 if f0 else None, sid)


def _compare(version: str, config: SynthesizerConfig, f0: bool, frames: int) -> None:
    torch.manual_seed(0)
    ours = build_synthesizer(config, version, f0, with_posterior=False).eval()  # type: ignore[arg-type]
    reference = reference_synthesizer(ours, config, version)
    args = _inputs(version, frames)
    if config.spk_embed_dim < 3:
        args = (*args[:4], torch.zeros(2, dtype=torch.long))

    torch.manual_seed(42)
    mine = _ours_infer(ours, args, f0)
    torch.manual_seed(42)
    theirs = reference_infer(reference, *args, f0=f0)
    assert mine.shape == theirs.shape == (2, 1, frames * config.hop_length)
    assert torch.isfinite(mine).all()
    assert float(theirs.abs().max()) > 1e-4  # a silent model would agree trivially
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)

    # Not a coincidence of outputs that ignore the noise: another seed moves the reference by
    # far more than we differ from it.
    torch.manual_seed(43)
    other = reference_infer(reference, *args, f0=f0)
    assert float((other - theirs).abs().max()) > 20 * float((mine - theirs).abs().max())


@pytest.mark.parametrize(("version", "rate", "f0"), VARIANTS)
def test_every_variant_matches_the_reference_class(version: str, rate: str, f0: bool) -> None:
    config = narrow(get_config(version, rate).synthesizer)  # type: ignore[arg-type]
    _compare(version, config, f0, frames=48)


@pytest.mark.slow
@pytest.mark.parametrize(("version", "rate", "f0"), FULL_SIZE)
def test_published_sizes_match_the_reference_class(version: str, rate: str, f0: bool) -> None:
    config = get_config(version, rate).synthesizer  # type: ignore[arg-type]
    _compare(version, config, f0, frames=24)


@pytest.mark.parametrize(("version", "f0"), [("v2", True), ("v1", False)])
def test_training_pass_matches_the_reference(version: str, f0: bool) -> None:
    """The training forward (posterior, flow, random slice, decoder) agrees too, so a model we
    train is the model RVC would have trained from the same batches."""
    config = replace(narrow(get_config(version, "40k").synthesizer), segment_frames=8)  # type: ignore[arg-type]
    torch.manual_seed(0)
    ours = build_synthesizer(config, version, f0).eval()  # type: ignore[arg-type]
    reference = reference_synthesizer(ours, config, version)
    phone, lengths, pitch, nsff0, sid = _inputs(version, 40)
    spec = torch.rand(2, config.spec_channels, 40, generator=torch.Generator().manual_seed(3))
    sid = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        torch.manual_seed(7)
        mine = ours(
            phone, lengths, pitch if f0 else None, nsff0 if f0 else None, spec, lengths, sid
        )
        torch.manual_seed(7)
        if f0:
            theirs = reference(phone, lengths, pitch, nsff0, spec, lengths, sid)
        else:
            theirs = reference(phone, lengths, spec, lengths, sid)
    audio, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q) = theirs
    torch.testing.assert_close(mine.ids_slice, ids_slice)
    torch.testing.assert_close(mine.audio, audio, atol=ATOL, rtol=0)
    torch.testing.assert_close(mine.x_mask, x_mask)
    torch.testing.assert_close(mine.z_mask, z_mask)
    pairs = {"z": z, "z_p": z_p, "m_p": m_p, "logs_p": logs_p, "m_q": m_q, "logs_q": logs_q}
    for name, expected in pairs.items():
        torch.testing.assert_close(getattr(mine, name), expected, atol=1e-4, rtol=1e-4)
