"""The fast synthesizer path (folded weight norm, windowed decoder, ONNX Runtime) against the
plain :meth:`Synthesizer.infer`: the same audio for the same seed, on every published layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from agents.converter.pipeline import PreparedPiece, synthesize
from agents.voice.checkpoint import VoiceModel
from agents.voice.configs import get_config
from agents.voice.inference import (
    ORT_SPINNING_KEY,
    FastSynthesizer,
    TorchWindow,
    decode_window,
    decoder_window,
    fold_weight_norm,
    infer_window,
    prepare_for_inference,
)
from agents.voice.synthesizer import build_synthesizer

# fp32 rounding of a different summation order: far below the 1e-3 an audible change needs, and
# far below RVC's own run-to-run spread (its noise is unseeded).
ATOL = 2e-5


def _synth(version: str, rate: str, f0: bool, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = get_config(version, rate, "tiny")  # type: ignore[arg-type]
    synth = build_synthesizer(config.synthesizer, version, f0, with_posterior=False).eval()  # type: ignore[arg-type]
    # Random, not the near-identity initialisation, so every layer matters.
    with torch.no_grad():
        for parameter in synth.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return synth


def _inputs(synth: Any, frames: int, batch: int = 1, seed: int = 1) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(seed)
    phone = torch.randn(batch, frames, synth.phone_dim, generator=gen)
    lengths = torch.full((batch,), frames)
    pitch = torch.randint(1, 256, (batch, frames), generator=gen)
    nsff0 = 100 + 300 * torch.rand(batch, frames, generator=gen)
    nsff0[:, frames // 3 : frames // 2] = 0.0  # an unvoiced stretch: the noise branch
    return phone, lengths, pitch, nsff0, torch.zeros(batch, dtype=torch.long)


def _plain(synth: Any, inputs: tuple[Any, ...], seed: int = 7) -> torch.Tensor:
    torch.manual_seed(seed)
    return synth.infer(*inputs)


def _fast(fast: FastSynthesizer, inputs: tuple[Any, ...], seed: int = 7, **window: int) -> Any:
    torch.manual_seed(seed)
    return infer_window(fast, *inputs, **window)


@pytest.mark.parametrize(
    ("version", "rate", "f0"),
    [("v2", "48k", True), ("v2", "40k", True), ("v2", "32k", True), ("v1", "40k", True),
     ("v1", "48k", False), ("v2", "40k", False)],
)  # fmt: skip
def test_windowed_decoder_equals_the_plain_path(version: str, rate: str, f0: bool) -> None:
    synth = _synth(version, rate, f0)
    inputs = _inputs(synth, 230)
    expected = _plain(synth, inputs)
    folded = _synth(version, rate, f0)  # the same weights (same seed); deepcopy breaks
    # parametrized modules
    assert fold_weight_norm(folded) > 0
    # Small windows, so most samples sit near a window edge.
    fast = FastSynthesizer(folded, TorchWindow(folded.dec), tile_frames=37)
    got = _fast(fast, inputs)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()


def test_context_frames_is_the_decoders_real_reach() -> None:
    """Changing one latent frame changes outputs no farther than ``context_frames`` away."""
    synth = _synth("v2", "48k", True)
    dec = synth.dec
    hop, frames, poke = dec.upp, 120, 60
    torch.manual_seed(0)  # the reach seen depends on the values a little (1888-1937 samples)
    z = torch.randn(1, dec.conv_pre.in_channels, frames)
    g = torch.randn(1, dec.cond.in_channels, 1)
    source = 0.1 * torch.randn(1, 1, frames * hop)
    with torch.no_grad():
        before = dec.render(z, source, g)
        z2 = z.clone()
        z2[:, :, poke] += 1.0
        after = dec.render(z2, source, g)
    changed = torch.nonzero((after - before).abs()[0, 0] > 0).flatten()
    reach_samples = max(poke * hop - int(changed.min()), int(changed.max()) - (poke + 1) * hop)
    assert 0 < reach_samples <= dec.context_frames() * hop
    # ... and the bound is not wildly loose: within 4 frames (the rounding up at each stage; the
    # last taps of a receptive field add too little to show). Measured: 7-frame bound, reach
    # 3.9-4.0 frames over seeds 0-5, so "within 3" failed about half the time unseeded.
    assert reach_samples > (dec.context_frames() - 4) * hop


def test_only_the_kept_frames_are_decoded_and_they_match() -> None:
    synth = _synth("v2", "40k", True)
    inputs = _inputs(synth, 300)
    expected = _plain(synth, inputs)
    fast = prepare_for_inference(_voice(_synth("v2", "40k", True)), "torch", tile_frames=64).fast
    hop = synth.hop_length
    got = _fast(fast, inputs, start=100, stop=250)
    assert got.shape[-1] == 150 * hop
    assert torch.allclose(got, expected[..., 100 * hop : 250 * hop], atol=ATOL)


def test_batched_pieces_of_different_lengths_match_the_plain_path() -> None:
    synth = _synth("v2", "48k", True)
    model = _voice(synth)
    fast_model = prepare_for_inference(_voice(_synth("v2", "48k", True)), "torch", tile_frames=50)
    gen = torch.Generator().manual_seed(3)
    pieces = []
    for frames in (180, 140):
        pieces.append(
            PreparedPiece(
                phone=torch.randn(frames, synth.phone_dim, generator=gen),
                coarse=torch.randint(1, 256, (frames,), generator=gen),
                nsf=150 + 100 * torch.rand(frames, generator=gen),
                frames=frames,
            )
        )
    keep = (20, 160)
    plain = synthesize(model, pieces, seed=5, keep=keep)
    fast = synthesize(fast_model, pieces, seed=5, keep=keep)
    hop = synth.hop_length
    assert [len(a) for a in plain] == [140 * hop, 120 * hop]
    for a, b in zip(plain, fast, strict=True):
        np.testing.assert_allclose(a, b, atol=ATOL)


def test_onnx_runtime_window_agrees_with_torch() -> None:
    pytest.importorskip("onnxruntime")
    for f0 in (True, False):
        synth = _synth("v2", "48k", f0)
        inputs = _inputs(synth, 150)
        expected = _plain(synth, inputs)
        model = prepare_for_inference(_voice(_synth("v2", "48k", f0)), "onnx", tile_frames=64)
        assert model.fast.runtime == "onnx"
        options = model.fast.window.session.get_session_options()
        assert options.get_session_config_entry(ORT_SPINNING_KEY) == "0"  # threads sleep
        got = _fast(model.fast, inputs)
        assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()


def test_auto_runtime_falls_back_to_torch_off_the_cpu_float32_path() -> None:
    synth = _synth("v2", "40k", True).double()
    assert decoder_window(synth.dec, "auto").name == "torch"
    with pytest.raises(ValueError, match="onnx"):
        decoder_window(synth.dec, "onnx")
    with pytest.raises(ValueError, match="unknown runtime"):
        decoder_window(synth.dec, "tvm")  # type: ignore[arg-type]


def test_decode_window_rejects_a_window_outside_the_piece() -> None:
    synth = _synth("v2", "40k", True)
    fast = FastSynthesizer(synth, TorchWindow(synth.dec))
    z = torch.zeros(1, synth.dec.conv_pre.in_channels, 10)
    with pytest.raises(ValueError, match="outside"):
        decode_window(fast, z, torch.zeros(1, 10), torch.zeros(1, 32, 1), 5, 11)


def _voice(synth: Any) -> VoiceModel:
    return VoiceModel(
        synthesizer=synth,
        sr=synth.config.sampling_rate,
        f0=synth.use_f0,
        version="v2" if synth.phone_dim == 768 else "v1",
        speaker_count=synth.config.spk_embed_dim,
    )


# --------------------------------------------------------------------------------------------------
# The volume-envelope mix, streamed: RVC's change_rms numbers, memory independent of length
# --------------------------------------------------------------------------------------------------


def _change_rms(source: np.ndarray, sr1: int, converted: np.ndarray, sr2: int, rate: float) -> Any:
    """RVC's change_rms formula, written out with librosa and torch as RVC does."""
    librosa = pytest.importorskip("librosa")
    rms1 = librosa.feature.rms(y=source, frame_length=sr1 // 2 * 2, hop_length=sr1 // 2)
    rms2 = librosa.feature.rms(y=converted, frame_length=sr2 // 2 * 2, hop_length=sr2 // 2)
    size = converted.shape[0]
    stretch = torch.nn.functional.interpolate
    rms1 = stretch(torch.from_numpy(rms1).unsqueeze(0), size=size, mode="linear").squeeze()
    rms2 = stretch(torch.from_numpy(rms2).unsqueeze(0), size=size, mode="linear").squeeze()
    rms2 = torch.clamp(rms2, min=1e-6)
    gain = torch.pow(rms1, 1 - rate) * torch.pow(rms2, rate - 1)
    return converted * gain.numpy()


@pytest.mark.parametrize("chunk", [1 << 20, 7_777])
def test_streamed_volume_mix_is_rvcs_change_rms(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    from agents.converter import pipeline

    monkeypatch.setattr(pipeline, "ENVELOPE_CHUNK", chunk)
    rng = np.random.default_rng(0)
    source = (rng.standard_normal(16000 * 7 + 123) * np.linspace(0, 1, 16000 * 7 + 123)).astype(
        np.float32
    )
    converted = (0.3 * rng.standard_normal(48000 * 7 + 369)).astype(np.float32)
    expected = _change_rms(source, 16000, converted.copy(), 48000, 0.25)
    got = pipeline.mix_volume_envelope(source, 16000, converted, 48000, 0.25)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    inplace = converted.copy()
    assert pipeline.mix_volume_envelope(source, 16000, inplace, 48000, 0.25, out=inplace) is inplace
    np.testing.assert_allclose(inplace, got, rtol=1e-6)


def test_volume_mix_memory_does_not_grow_with_the_song() -> None:
    """In place on 10 minutes at 48 kHz, the mix allocates a few MB, not copies of the song."""
    import tracemalloc

    from agents.converter.pipeline import mix_volume_envelope

    seconds = 600
    source = np.full(16000 * seconds, 0.1, dtype=np.float32)
    converted = np.full(48000 * seconds, 0.2, dtype=np.float32)  # 115 MB
    tracemalloc.start()
    try:
        mix_volume_envelope(source, 16000, converted, 48000, 0.25, out=converted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB"


@pytest.mark.parametrize(("sr_in", "sr_out"), [(48000, 44100), (44100, 16000), (16000, 40000)])
def test_chunked_resampling_equals_resampling_the_whole(
    monkeypatch: pytest.MonkeyPatch, sr_in: int, sr_out: int
) -> None:
    from foundation import resample as resample_module

    rng = np.random.default_rng(1)
    signal = rng.standard_normal(sr_in * 3 + 77).astype(np.float32)
    whole = resample_module._resample_whole(signal, sr_in, sr_out)
    monkeypatch.setattr(resample_module, "RESAMPLE_CHUNK", 20_000)  # many chunks
    chunked = resample_module.resample(signal, sr_in, sr_out)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=2e-6)
