"""The RVC inference pipeline: real tiny checkpoints end to end, and each step on its own."""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from agents.converter import pipeline
from agents.converter.models import ModelCache, estimated_bytes
from agents.converter.pipeline import (
    Windows,
    convert_audio16k,
    convert_rvc,
    cut_points,
    median_radius,
    mix_volume_envelope,
    pitch_track,
    protect_unvoiced,
    upsample_features,
)
from agents.voice.checkpoint import VoiceModel, load_voice_model, save_inference_model
from agents.voice.configs import get_config
from agents.voice.f0 import coarse_f0, get_f0_extractor, median_filter_f0
from agents.voice.synthesizer import build_synthesizer
from foundation.segments import moving_abs_sum, quiet_cut_points, spans
from foundation.signal import DiskSignal, in_memory, write_sound_file
from frontends.demo_audio import sung_vocal, write
from schemas.events import ConversionOptions

SR16 = 16000
SMALL_PIECES = Windows(pad_s=0.4, query_s=0.2, center_s=0.8, max_s=1.0)
ONE_PIECE = Windows(pad_s=0.4, query_s=0.2, center_s=30.0, max_s=30.0)


# --------------------------------------------------------------------------------------------------
# Tiny real checkpoints (written here, in the public formats)
# --------------------------------------------------------------------------------------------------


def fairseq_hubert_state(
    embed: int = 768, final: int = 256, conv: int = 32, ff: int = 64, layers: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random HuBERT in fairseq's key layout: HuBERT-base's conv stack (hop 320, receptive
    field 400) and width, one narrow transformer layer."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.05

    state: dict[str, torch.Tensor] = {}
    convs = [(conv, 1, 10)] + [(conv, conv, 3)] * 4 + [(conv, conv, 2)] * 2
    for i, (out_ch, in_ch, kernel) in enumerate(convs):
        state[f"feature_extractor.conv_layers.{i}.0.weight"] = rand(out_ch, in_ch, kernel)
    state["feature_extractor.conv_layers.0.2.weight"] = torch.ones(conv)
    state["feature_extractor.conv_layers.0.2.bias"] = torch.zeros(conv)

    def norm(prefix: str, width: int) -> None:
        state[f"{prefix}.weight"] = torch.ones(width)
        state[f"{prefix}.bias"] = torch.zeros(width)

    def linear(prefix: str, out_f: int, in_f: int) -> None:
        state[f"{prefix}.weight"] = rand(out_f, in_f)
        state[f"{prefix}.bias"] = torch.zeros(out_f)

    norm("layer_norm", conv)
    linear("post_extract_proj", embed, conv)
    state["encoder.pos_conv.0.bias"] = torch.zeros(embed)
    state["encoder.pos_conv.0.weight_g"] = torch.ones(1, 1, 4)
    state["encoder.pos_conv.0.weight_v"] = rand(embed, embed // 16, 4)
    norm("encoder.layer_norm", embed)
    for n in range(layers):
        prefix = f"encoder.layers.{n}"
        for proj in ("q", "k", "v", "out"):
            linear(f"{prefix}.self_attn.{proj}_proj", embed, embed)
        norm(f"{prefix}.self_attn_layer_norm", embed)
        linear(f"{prefix}.fc1", ff, embed)
        linear(f"{prefix}.fc2", embed, ff)
        norm(f"{prefix}.final_layer_norm", embed)
    linear("final_proj", final, embed)
    return state


def write_tiny_hubert(path: Path) -> Path:
    checkpoint = {
        "model": fairseq_hubert_state(),
        "args": argparse.Namespace(encoder_attention_heads=12, normalize=False),
    }
    torch.save(checkpoint, path)
    return path


def write_tiny_voice_model(path: Path, version: str, sample_rate: str, f0: bool) -> Path:
    torch.manual_seed(0)
    config = get_config(version, sample_rate, "tiny")  # type: ignore[arg-type]
    synthesizer = build_synthesizer(config.synthesizer, version, f0, with_posterior=False)  # type: ignore[arg-type]
    return save_inference_model(synthesizer, path, version=version, precision="fp32")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_encoder(models_dir: Path) -> Any:
    from agents.voice.content import load_content_encoder

    return load_content_encoder(write_tiny_hubert(models_dir / "hubert_tiny.pt"))


@pytest.fixture(scope="module")
def vocals_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio, _ = sung_vocal(2.0, 44100, seed=3)
    return write(tmp_path_factory.mktemp("vocals") / "vocals.wav", audio, 44100)


# --------------------------------------------------------------------------------------------------
# Frame-local stand-ins: they make the pipeline's bookkeeping exactly checkable
# --------------------------------------------------------------------------------------------------


class FrameLocalEncoder:
    """HuBERT's framing (400-sample window every 320 samples) with features of each window
    alone, so any difference between runs comes from the pipeline, not from context."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def extract(self, audio16k: torch.Tensor, version: str) -> torch.Tensor:
        x = audio16k.detach().cpu().numpy().astype(np.float64)
        count = (len(x) - 400) // 320 + 1
        windows = np.lib.stride_tricks.sliding_window_view(x, 400)[::320][:count]
        rms = np.sqrt(np.mean(windows**2, axis=1))
        mean = windows.mean(axis=1)
        ramp = np.linspace(0.5, 1.5, self.dim)
        return torch.from_numpy(np.outer(rms, ramp) + mean[:, None]).float()


class RecordingSynthesizer(nn.Module):
    """Renders each frame as ``hop`` samples of (first feature + f0/1000) and records its inputs."""

    def __init__(self, hop: int, phone_dim: int, use_f0: bool) -> None:
        super().__init__()
        self.hop_length = hop
        self.phone_dim = phone_dim
        self.use_f0 = use_f0
        self.gain = nn.Parameter(torch.ones(1))
        self.calls: list[dict[str, Any]] = []

    def infer(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        nsff0: torch.Tensor | None,
        sid: torch.Tensor,
    ) -> torch.Tensor:
        self.calls.append(
            {"phone": phone.clone(), "lengths": phone_lengths.clone(), "pitch": pitch, "f0": nsff0}
        )
        value = phone[:, :, 0] + (nsff0 / 1000.0 if nsff0 is not None else 0.0)
        rendered = value.repeat_interleave(self.hop_length, dim=1) * self.gain
        return rendered.reshape(phone.shape[0], 1, -1)


def recording_model(tgt_sr: int = 40000, f0: bool = True, dim: int = 8) -> Any:
    synthesizer = RecordingSynthesizer(tgt_sr // 100, dim, f0)
    return SimpleNamespace(
        synthesizer=synthesizer, tgt_sr=tgt_sr, f0=f0, version="v2", phone_dim=dim
    )


class FixedPitch:
    """An f0 'extractor' returning a prescribed track (voiced where ``voiced`` is True)."""

    name = "fixed"

    def __init__(self, voiced: np.ndarray, hz: float = 220.0) -> None:
        self.voiced = voiced
        self.hz = hz

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        frames = p_len if p_len is not None else len(audio16k) // 160 + 1
        f0 = np.where(self.voiced[:frames], self.hz, 0.0)
        return np.pad(f0, (0, frames - len(f0))).astype(np.float32)


def tone(seconds: float, hz: float = 220.0, sr: int = SR16) -> np.ndarray:
    """A steady voiced-like tone: the fundamental and six overtones (a pure sine fools Harvest)."""
    t = np.arange(int(seconds * sr)) / sr
    return sum(0.3 / k * np.sin(2 * np.pi * hz * k * t) for k in range(1, 8)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# End to end with real tiny checkpoints
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "sample_rate", "f0"),
    [("v1", "40k", True), ("v2", "48k", True), ("v1", "48k", False), ("v2", "40k", False)],
)
def test_tiny_models_convert_with_right_length_and_rate(
    version: str,
    sample_rate: str,
    f0: bool,
    models_dir: Path,
    tiny_encoder: Any,
    vocals_file: Path,
) -> None:
    path = write_tiny_voice_model(
        models_dir / f"{version}_{sample_rate}_{f0}.pth", version, sample_rate, f0
    )
    voice_model = load_voice_model(path)
    extractor = get_f0_extractor("pm") if f0 else None
    # Two variants are cut into pieces, one of them synthesized in padded batches (the real
    # synthesizer's masks); the joins themselves are checked exactly further down.
    windows = SMALL_PIECES if f0 else ONE_PIECE
    audio, sr = convert_rvc(
        vocals_file,
        voice_model,
        tiny_encoder,
        None,
        ConversionOptions(),
        extractor,
        windows=windows,
        batch_pieces=3 if version == "v2" else 1,
    )
    assert sr == voice_model.tgt_sr == {"40k": 40000, "48k": 48000}[sample_rate]
    assert audio.dtype == np.float32
    assert len(audio) == round(2.0 * sr)
    assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) <= 0.99 + 1e-6
    assert np.std(audio) > 0  # a random model still makes sound


def test_output_resampled_to_the_stem_rate_and_reproducible(
    models_dir: Path, tiny_encoder: Any, vocals_file: Path
) -> None:
    voice_model = load_voice_model(
        write_tiny_voice_model(models_dir / "v2_40k_resample.pth", "v2", "40k", True)
    )
    extractor = get_f0_extractor("pm")
    params = ConversionOptions(f0_up_key=3)
    first, sr = convert_rvc(
        vocals_file, voice_model, tiny_encoder, None, params, extractor, output_sr=44100
    )
    again, _ = convert_rvc(
        vocals_file, voice_model, tiny_encoder, None, params, extractor, output_sr=44100
    )
    assert sr == 44100
    assert abs(len(first) - 2 * 44100) <= 2
    np.testing.assert_array_equal(first, again)  # the prior noise is seeded


def test_index_blending_reaches_the_real_synthesizer(
    models_dir: Path, tiny_encoder: Any, vocals_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.voice.index import build_index

    voice_model = load_voice_model(
        write_tiny_voice_model(models_dir / "v2_40k_index.pth", "v2", "40k", True)
    )
    rng = np.random.default_rng(0)
    index = build_index(rng.standard_normal((200, 768)).astype(np.float32) + 5.0)
    index_pair = (index, index.reconstruct_n(0, index.ntotal))
    synthesizer = voice_model.synthesizer
    real_infer = synthesizer.infer
    phones: list[torch.Tensor] = []

    def recording_infer(phone: torch.Tensor, *args: Any) -> torch.Tensor:
        phones.append(phone.clone())
        return real_infer(phone, *args)

    monkeypatch.setattr(synthesizer, "infer", recording_infer)
    extractor = get_f0_extractor("pm")
    outputs = [
        convert_rvc(
            vocals_file,
            voice_model,
            tiny_encoder,
            pair,
            ConversionOptions(index_rate=1.0, protect=0.5),
            extractor,
            windows=ONE_PIECE,
        )[0]
        for pair in (None, index_pair)
    ]
    plain, blended = phones
    assert len(outputs[0]) == len(outputs[1]) == 2 * 40000
    # Every frame was replaced by a mean of indexed vectors: near their centre (5), unlike the
    # encoder's own features.
    assert abs(float(blended.mean()) - 5.0) < 0.5
    assert abs(float(plain.mean()) - 5.0) > 2.0


# --------------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("semitones", [-12, -5, 0, 7, 12])
def test_pitch_step_shifts_by_exactly_two_to_the_key_over_twelve(semitones: int) -> None:
    extractor = get_f0_extractor("harvest")
    audio = tone(1.0, 220.0)
    p_len = len(audio) // 160
    raw = extractor.compute(audio, p_len)
    coarse, f0 = pitch_track(audio, p_len, extractor, semitones, filter_radius=0)
    assert len(f0) == len(coarse) == p_len
    voiced = raw > 0
    assert voiced.mean() > 0.8 and np.median(raw[voiced]) == pytest.approx(220.0, rel=0.01)
    np.testing.assert_allclose(f0[voiced] / raw[voiced], 2.0 ** (semitones / 12.0), rtol=1e-6)
    assert np.all(f0[~voiced] == 0)
    np.testing.assert_array_equal(coarse, coarse_f0(f0))
    # filter_radius >= 3 adds RVC's 3-frame median on top of the shift (on the whole track).
    _, filtered = pitch_track(audio, p_len, extractor, semitones, filter_radius=3)
    whole = extractor.compute(audio) * np.float32(2.0 ** (semitones / 12.0))
    np.testing.assert_allclose(filtered, median_filter_f0(whole, 1)[:p_len], rtol=1e-6)


def test_median_radius_follows_rvc() -> None:
    """RVC smooths Harvest's track only, always over 3 frames."""
    assert [median_radius(r) for r in range(8)] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert [median_radius(r, "fcpe") for r in range(8)] == [0] * 8


def test_synthesizer_receives_the_shifted_f0() -> None:
    audio = tone(1.5)
    frames = len(audio) // 160 + 200
    extractor = FixedPitch(np.arange(frames) % 50 < 40, hz=200.0)
    recorded = {}
    for key in (0, 5):
        model = recording_model()
        convert_audio16k(
            audio,
            model,
            FrameLocalEncoder(8),
            None,
            ConversionOptions(f0_up_key=key),
            extractor,
            windows=ONE_PIECE,
        )
        (call,) = model.synthesizer.calls
        recorded[key] = (call["f0"][0].numpy(), call["pitch"][0].numpy())
    f0_plain, f0_shifted = recorded[0][0], recorded[5][0]
    voiced = f0_plain > 0
    assert voiced.any() and not voiced.all()
    np.testing.assert_allclose(f0_shifted[voiced] / f0_plain[voiced], 2.0 ** (5 / 12), rtol=1e-6)
    assert np.all(f0_shifted[~voiced] == 0)
    np.testing.assert_array_equal(recorded[5][1], coarse_f0(f0_shifted))


def test_protect_mixes_source_features_into_unvoiced_frames() -> None:
    converted = torch.full((6, 3), 10.0)
    source = torch.zeros(6, 3)
    f0 = torch.tensor([200.0, 0.0, 210.0, 0.0, 0.0, 190.0])
    mixed = protect_unvoiced(converted, source, f0, 0.25)
    np.testing.assert_allclose(mixed[:, 0].numpy(), [10.0, 2.5, 10.0, 2.5, 2.5, 10.0])
    assert torch.equal(protect_unvoiced(converted, source, f0, 0.5), converted)


def test_protect_and_index_through_the_pipeline() -> None:
    """Tone - noise - tone: with the index every voiced frame moves to the indexed voice, and
    the unvoiced (noise) frames keep the source's features in proportion ``1 - protect``."""
    import faiss

    rng = np.random.default_rng(1)
    noise = (0.05 * rng.standard_normal(SR16 // 2)).astype(np.float32)
    audio = np.concatenate([tone(0.8), noise, tone(0.8)])
    dim = 8
    pad_frames = ONE_PIECE.samples(ONE_PIECE.pad_s) // 160
    frames = len(audio) // 160 + 2 * pad_frames
    frame_time = np.arange(frames) - pad_frames
    voiced = (frame_time < 80) | (frame_time >= 130)
    extractor = FixedPitch(voiced)

    # The "voice" in the index: one feature vector (with a little spread).
    voice_vector = np.linspace(2.0, 3.0, dim).astype(np.float32)
    vectors = voice_vector + 1e-3 * rng.standard_normal((32, dim)).astype(np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(vectors)

    def phone(index_rate: float, protect: float) -> np.ndarray:
        model = recording_model(dim=dim)
        params = ConversionOptions(index_rate=index_rate, protect=protect, filter_radius=0)
        convert_audio16k(
            audio,
            model,
            FrameLocalEncoder(dim),
            (index, vectors),
            params,
            extractor,
            windows=ONE_PIECE,
        )
        (call,) = model.synthesizer.calls
        return call["phone"][0].numpy()

    source = phone(0.0, 0.5)
    rate, protect = 0.75, 0.2
    result = phone(rate, protect)
    retrieved = rate * voice_vector + (1 - rate) * source
    expected = np.where(
        voiced[: len(source), None], retrieved, protect * retrieved + (1 - protect) * source
    )
    np.testing.assert_allclose(result, expected, atol=2e-3)
    # Without protection the noise frames are converted like the rest.
    np.testing.assert_allclose(phone(rate, 0.5), retrieved, atol=2e-3)


def test_pieces_join_seamlessly() -> None:
    """Cut into pieces or converted whole, frame-local models give the very same output: the
    pieces' context, trimming and frame bookkeeping line up sample for sample."""
    audio, _ = sung_vocal(3.0, SR16, seed=7)
    extractor = get_f0_extractor("pm")
    outputs = {}
    for name, windows in (("whole", ONE_PIECE), ("pieces", SMALL_PIECES)):
        model = recording_model(tgt_sr=48000)
        outputs[name] = convert_audio16k(
            audio,
            model,
            FrameLocalEncoder(8),
            None,
            ConversionOptions(),
            extractor,
            windows=windows,
        )
        outputs[name + "_calls"] = len(model.synthesizer.calls)
    assert outputs["whole_calls"] == 1 and outputs["pieces_calls"] >= 3
    assert len(outputs["whole"]) == len(outputs["pieces"]) == 3 * 48000
    np.testing.assert_allclose(outputs["pieces"], outputs["whole"], atol=1e-5)


def test_batched_pieces_give_the_same_output_in_fewer_synthesizer_calls() -> None:
    audio, _ = sung_vocal(3.0, SR16, seed=7)
    extractor = get_f0_extractor("pm")
    outputs = {}
    calls = {}
    for batch in (1, 3):
        model = recording_model(tgt_sr=40000)
        outputs[batch] = convert_audio16k(
            audio,
            model,
            FrameLocalEncoder(8),
            None,
            ConversionOptions(),
            extractor,
            windows=SMALL_PIECES,
            batch_pieces=batch,
        )
        calls[batch] = [call["phone"].shape[0] for call in model.synthesizer.calls]
    assert max(calls[1]) == 1 and len(calls[1]) >= 3
    assert max(calls[3]) == 3 and len(calls[3]) == -(-len(calls[1]) // 3)
    np.testing.assert_allclose(outputs[3], outputs[1], atol=1e-5)


def test_cuts_fall_in_quiet_gaps_on_the_feature_grid() -> None:
    audio = tone(6.0)
    gaps = [(int(1.9 * SR16), int(2.1 * SR16)), (int(3.5 * SR16), int(3.7 * SR16))]
    for start, end in gaps:
        audio[start:end] = 0.0
    windows = Windows(pad_s=0.2, query_s=0.5, center_s=1.8, max_s=2.0)
    cuts = cut_points(audio, windows)
    assert cuts, "a 6 s input with max 2 s must be cut"
    assert all(cut % 320 == 0 for cut in cuts)
    for cut in cuts[:2]:
        assert any(start <= cut <= end for start, end in gaps), cut
    assert spans(len(audio), cuts)[0][0] == 0 and spans(len(audio), cuts)[-1][1] == len(audio)
    assert cut_points(audio[:SR16], windows) == []
    assert quiet_cut_points(np.ones(100), every=200, search=10, window=5) == []


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.integers(-6, 6), min_size=1, max_size=400),
    every=st.integers(1, 60),
    search=st.integers(0, 30),
    window=st.integers(1, 40),
    align=st.integers(1, 8),
)
def test_cuts_from_local_sums_are_those_of_the_whole_energy_curve(
    values: list[int], every: int, search: int, window: int, align: int
) -> None:
    """Cut points read the moving sum near each centre only; they are the cuts the whole
    song's curve gives (integer samples: the sums are exact, ties break the same way)."""
    audio = np.asarray(values, dtype=np.float32)
    energy = moving_abs_sum(audio, window)
    expected: list[int] = []
    if len(audio) > every + search:
        for centre in range(every, len(audio) - search, every):
            low, high = max(0, centre - search), min(len(audio), centre + search + 1)
            cut = (low + int(np.argmin(energy[low:high]))) // align * align
            if 0 < cut < len(audio) and (not expected or cut > expected[-1]):
                expected.append(cut)
    assert quiet_cut_points(audio, every, search, window, align) == expected


def test_upsampled_features_match_the_pitch_grid() -> None:
    features = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    doubled = upsample_features(features, 12)
    assert doubled.shape == (12, 2)
    np.testing.assert_array_equal(doubled[:10, 0].numpy(), [0, 0, 2, 2, 4, 4, 6, 6, 8, 8])
    np.testing.assert_array_equal(doubled[10:, 0].numpy(), [8, 8])  # the last frame repeats
    assert upsample_features(features, 7).shape == (7, 2)


def test_volume_envelope_blend() -> None:
    sr = 16000
    t = np.arange(4 * sr) / sr
    source = (np.where(t < 2, 0.5, 0.05) * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    converted = (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    assert mix_volume_envelope(source, sr, converted, sr, 1.0) is converted
    copied = mix_volume_envelope(source, sr, converted, sr, 0.0)

    def level(x: np.ndarray, a: float, b: float) -> float:
        return float(np.sqrt(np.mean(x[int(a * sr) : int(b * sr)] ** 2)))

    assert level(copied, 0.2, 1.2) == pytest.approx(level(source, 0.2, 1.2), rel=0.15)
    assert level(copied, 2.8, 3.8) == pytest.approx(level(source, 2.8, 3.8), rel=0.15)
    half = mix_volume_envelope(source, sr, converted, sr, 0.5)
    geometric = np.sqrt(level(source, 0.2, 1.2) * level(converted, 0.2, 1.2))
    assert level(half, 0.2, 1.2) == pytest.approx(geometric, rel=0.15)


# --------------------------------------------------------------------------------------------------
# Model cache
# --------------------------------------------------------------------------------------------------


def test_model_cache_is_lru_bounded_by_bytes() -> None:
    loads: list[str] = []

    def loader(name: str, floats: int) -> Any:
        def load() -> nn.Module:
            loads.append(name)
            return nn.Linear(floats, 1, bias=False)

        return load

    cache = ModelCache(limit_bytes=4 * 2500)  # room for 2500 float32 weights
    a = cache.get("a", loader("a", 1000))
    assert cache.get("a", loader("a", 1000)) is a and loads == ["a"]
    cache.get("b", loader("b", 1000))
    cache.get("a", loader("a", 1000))  # a is now the most recent
    cache.get("c", loader("c", 1000))  # over the bound: b (least recent) goes
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.total_bytes <= cache.limit_bytes
    cache.get("huge", loader("huge", 10_000))  # alone over the bound: still kept
    assert "huge" in cache and len(cache) == 1
    assert cache.hits == 2 and cache.misses == 4


def test_estimated_bytes_of_a_voice_model(models_dir: Path) -> None:
    voice_model = load_voice_model(
        write_tiny_voice_model(models_dir / "v1_40k_size.pth", "v1", "40k", True)
    )
    assert isinstance(voice_model, VoiceModel)
    params = sum(p.numel() * 4 for p in voice_model.synthesizer.parameters())
    assert params <= estimated_bytes(voice_model) <= params * 1.5
    assert pipeline.synth_hop(voice_model) == 400


# --------------------------------------------------------------------------------------------------
# Long songs: the converted song is kept on disk, so memory does not grow with the song
# --------------------------------------------------------------------------------------------------


def test_rendering_into_a_disk_signal_gives_the_same_samples(tmp_path: Path) -> None:
    audio, _ = sung_vocal(3.0, SR16, seed=11)
    extractor = get_f0_extractor("pm")
    params = ConversionOptions(rms_mix_rate=0.25)
    outputs = []
    for allocate in (in_memory, DiskSignal.factory(tmp_path)):
        model = recording_model(tgt_sr=48000)
        with torch.no_grad():
            model.synthesizer.gain.fill_(1e5)  # loud enough for the 0.99 peak scaling to act
        rendered = convert_audio16k(
            audio, model, FrameLocalEncoder(8), None, params, extractor,
            windows=SMALL_PIECES, allocate=allocate,
        )  # fmt: skip
        outputs.append(np.asarray(rendered[:]))
    assert float(np.max(np.abs(outputs[0]))) == pytest.approx(0.99)
    np.testing.assert_array_equal(outputs[1], outputs[0])


def _traced_peak_of_a_conversion(seconds: int, tmp_path: Path) -> int:
    """Peak bytes numpy (and Python) allocate while a ``seconds`` long vocal at 44.1 kHz is
    converted at 40 kHz, resampled back to 44.1 kHz and encoded, as the stage does it."""
    vocals = tmp_path / f"vocals_{seconds}.flac"
    sf.write(vocals, np.tile(tone(1.0, sr=44100), seconds), 44100, subtype="PCM_16")
    model = recording_model(tgt_sr=40000)
    pitch = FixedPitch(np.ones(seconds * 100 + 1000, dtype=bool))
    tracemalloc.start()
    try:
        converted, sr = convert_rvc(
            vocals, model, FrameLocalEncoder(8), None, ConversionOptions(), pitch,
            output_sr=44100, allocate=DiskSignal.factory(tmp_path),
        )  # fmt: skip
        write_sound_file(tmp_path / f"converted_{seconds}.flac", converted, sr)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sr == 44100 and abs(len(converted) - seconds * 44100) <= 2
    return peak


def test_memory_does_not_grow_with_the_song_beyond_its_16k_input(tmp_path: Path) -> None:
    """Six times the song costs the extra minutes of its 16 kHz input (high-passed in place)
    and no more: no copy at the output rate (the converted song lives in temporary files), no
    whole-song energy curve for the cut points, no padded copy while the pieces render."""
    short, long = (
        _traced_peak_of_a_conversion(60, tmp_path),
        _traced_peak_of_a_conversion(360, tmp_path),
    )
    extra_s = 300
    one_copy_16k, one_copy_out = extra_s * SR16 * 4, extra_s * 44100 * 4
    assert long - short <= 1.5 * one_copy_16k < one_copy_out
