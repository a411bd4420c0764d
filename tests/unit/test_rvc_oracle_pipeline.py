"""Oracle: each step of our RVC inference pipeline equals ``rvc==0.3.5``'s on the same inputs.

The reference functions run as they are in ``rvc/modules/vc/pipeline.py`` (see
tests/rvc_reference.py): f0 post-processing (``Pipeline.get_f0``), the unvoiced-f0 interpolation
of RVC's current pipeline (``interpolate_f0``), ``change_rms``, the 48 Hz high-pass and, through
``Pipeline.vc`` with a synthesizer that records what it is given, the index blend, the feature
upsampling, ``protect`` and the number of frames rendered.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from scipy import signal

from agents.converter.pipeline import mix_volume_envelope, pitch_track, prepare_piece
from agents.voice.f0 import get_f0_extractor, interpolate_unvoiced
from agents.voice.index import build_index, load_index, save_index
from foundation.audio import highpass_48hz
from schemas.events import ConversionOptions
from tests.rvc_reference import (
    ReferenceContentModel,
    ReferenceFixedF0,
    harvest_predictor,
    reference_pipeline,
    reference_pipeline_for,
)
from tests.unit.test_converter import FrameLocalEncoder, tone

SR16 = 16000


def _reference_interpolate(f0: np.ndarray) -> np.ndarray:
    return harvest_predictor.HarvestF0Predictor().interpolate_f0(np.array(f0, dtype=np.float64))[0]


def _f0_corpus(seed: int = 0, count: int = 300) -> list[np.ndarray]:
    """Random voiced/unvoiced tracks, plus the edge cases of the reference's loop."""
    rng = np.random.default_rng(seed)
    tracks = [
        np.zeros(0),
        np.zeros(1),
        np.array([0.0, 0.0, 0.0]),
        np.array([220.0]),
        np.array([0.0, 0.0, 180.0]),  # only the last frame voiced
        np.array([0.0, 0.0, 180.0, 0.0]),
        np.array([150.0, 0.0, 0.0, 300.0]),  # the next voiced frame is the last one
        np.array([150.0, 0.0, 0.0, 300.0, 310.0]),
        np.array([0.0, 200.0, 0.0, 0.0, 0.0, 400.0, 410.0, 0.0]),
    ]
    for _ in range(count):
        n = int(rng.integers(2, 120))
        voiced = rng.random(n) < rng.uniform(0.05, 0.95)
        tracks.append(np.where(voiced, rng.uniform(60.0, 1000.0, n), 0.0))
    return tracks


def test_unvoiced_interpolation_is_rvcs() -> None:
    for track in _f0_corpus():
        np.testing.assert_allclose(
            interpolate_unvoiced(track), _reference_interpolate(track), rtol=1e-6, atol=1e-3
        )


def _singing(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Notes with breaths between them: voiced and unvoiced frames for every tracker."""
    rng = np.random.default_rng(seed)
    parts = []
    for hz in (196.0, 262.0, 330.0, 440.0, 880.0, 1046.0):
        parts.append(tone(seconds / 8, hz))
        parts.append(0.002 * rng.standard_normal(int(SR16 * seconds / 24)).astype(np.float32))
    return np.concatenate(parts)


class _Track:
    """A prescribed f0 track for any input (the 'rmvpe' model object the reference loads)."""

    name = "fixed"

    def __init__(self, f0: np.ndarray) -> None:
        self.f0 = f0

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        frames = p_len if p_len is not None else len(audio16k) // 160 + 1
        return np.pad(self.f0, (0, max(0, frames - len(self.f0))))[:frames].astype(np.float32)


@pytest.mark.parametrize("f0_up_key", [-12, 0, 7])
@pytest.mark.parametrize("filter_radius", [0, 3, 5])
def test_harvest_post_processing_is_rvcs(f0_up_key: int, filter_radius: int) -> None:
    """Harvest + StoneMask, RVC's 3-frame median (Harvest only), transpose, coarse pitch."""
    audio = _singing(2.0)
    p_len = len(audio) // 160
    reference = reference_pipeline_for(40000)
    coarse_ref, f0_ref = reference.get_f0(
        f"harvest-{f0_up_key}-{filter_radius}", audio, p_len, f0_up_key, "harvest", filter_radius
    )
    coarse, f0 = pitch_track(audio, p_len, get_f0_extractor("harvest"), f0_up_key, filter_radius)
    f0_ref, coarse_ref = f0_ref[:p_len], coarse_ref[:p_len]
    assert (f0_ref > 0).mean() > 0.5
    np.testing.assert_allclose(f0, f0_ref, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(coarse, coarse_ref)


@pytest.mark.parametrize("f0_up_key", [-7, 0, 12])
@pytest.mark.parametrize("unvoiced_f0", ["keep", "interpolate"])
def test_post_processing_of_other_trackers_is_rvcs(f0_up_key: int, unvoiced_f0: str) -> None:
    """The other trackers' tracks are not median-filtered (filter_radius only smooths Harvest);
    with ``unvoiced_f0='interpolate'`` the track is filled as RVC's current pipeline fills it."""
    rng = np.random.default_rng(f0_up_key + 20)
    frames = 400
    # A tracker's natural length: one frame more than the pipeline keeps.
    track = np.where(rng.random(frames + 1) < 0.7, rng.uniform(70.0, 1050.0, frames + 1), 0.0)
    reference = reference_pipeline_for(40000)
    source = _reference_interpolate(track) if unvoiced_f0 == "interpolate" else track
    reference.model_rmvpe = ReferenceFixedF0(_Track(source))
    audio = np.zeros(frames * 160, dtype=np.float32)
    coarse_ref, f0_ref = reference.get_f0("x", audio, frames, f0_up_key, "rmvpe", 3)
    coarse, f0 = pitch_track(audio, frames, _Track(track), f0_up_key, 3, unvoiced_f0)
    np.testing.assert_allclose(f0, f0_ref[:frames], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(coarse, coarse_ref[:frames])
    if unvoiced_f0 == "interpolate":
        assert np.all(f0 > 0)
    else:
        np.testing.assert_array_equal(f0 == 0, track[:frames] == 0)


def _envelope(samples: int, sr: int, seed: int) -> np.ndarray:
    """Noise under a loudness contour that rises and falls over the seconds (phrases, rests)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sr
    contour = 0.02 + 0.5 * np.abs(np.sin(2 * np.pi * 0.23 * t + seed)) ** 3
    contour[(t > 1.3) & (t < 2.1)] = 1e-4
    return (contour * rng.standard_normal(samples)).astype(np.float32)


@pytest.mark.parametrize("target_sr", [32000, 40000, 48000])
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.6, 0.95])
def test_volume_envelope_is_rvcs_change_rms(target_sr: int, rate: float) -> None:
    seconds = 5.3
    source = _envelope(int(seconds * SR16), SR16, 1)
    # RVC's output is a little shorter than its input (a frame or two per piece).
    converted = _envelope(int(seconds * target_sr) - target_sr // 50, target_sr, 2)
    expected = reference_pipeline.change_rms(source, SR16, converted.copy(), target_sr, rate)
    ours = mix_volume_envelope(source, SR16, converted, target_sr, rate)
    np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=1e-7)


def test_highpass_is_rvcs() -> None:
    audio = _singing(1.5) + 0.3 * np.sin(2 * np.pi * 20 * np.arange(24000) / SR16).astype(
        np.float32
    )
    expected = signal.filtfilt(reference_pipeline.bh, reference_pipeline.ah, audio)
    np.testing.assert_allclose(highpass_48hz(audio, SR16, zero_phase=True), expected, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# What reaches the synthesizer: index blend, upsampling, protect, frame count
# --------------------------------------------------------------------------------------------------


class _RecordingNet:
    """The ``net_g`` RVC's ``Pipeline.vc`` calls: records its inputs, renders silence."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, ...]] = []

    def infer(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append(tuple(a.clone() for a in args))
        frames = int(args[1][0])
        return (torch.zeros(1, 1, frames * 400),)


@pytest.fixture(scope="module")
def voice_index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An IVF index as the trainer writes it, read back as the converter (and RVC) read it."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal((3000, 16)).astype(np.float32)
    path = save_index(build_index(features), tmp_path_factory.mktemp("index") / "voice.index")
    return load_index(path)


@pytest.mark.parametrize(
    ("index_rate", "protect", "f0"),
    [
        (0.0, 0.33, True),
        (0.75, 0.33, True),
        (1.0, 0.1, True),
        (0.75, 0.5, True),
        (0.5, 0.33, False),
    ],
)
@pytest.mark.parametrize("samples", [32000, 32160, 32240])
def test_synthesizer_inputs_are_rvcs(
    voice_index: Any, index_rate: float, protect: float, f0: bool, samples: int
) -> None:
    """Same piece, same features, same f0: RVC's ``vc`` and our ``prepare_piece`` hand the
    synthesizer the same features, pitch and frame count (HuBERT framing leaves 0-2 frames)."""
    rng = np.random.default_rng(samples)
    audio = (0.3 * rng.standard_normal(samples)).astype(np.float32)
    frames = samples // 160
    pitchf = np.where(rng.random(frames) < 0.6, rng.uniform(80.0, 900.0, frames), 0.0)
    pitchf = pitchf.astype(np.float32)
    pitch = np.rint(1 + 254 * rng.random(frames)).astype(np.int64)
    encoder = FrameLocalEncoder(16)
    loaded = voice_index

    reference = reference_pipeline_for(40000)
    net = _RecordingNet()
    index, big_npy = loaded if index_rate > 0 else (None, None)
    reference.vc(
        ReferenceContentModel(encoder),
        net,
        torch.tensor([0]),
        audio,
        torch.from_numpy(pitch)[None] if f0 else None,
        torch.from_numpy(pitchf)[None] if f0 else None,
        {"npy": 0.0, "infer": 0.0, "f0": 0.0},
        index,
        big_npy,
        index_rate,
        "v2",
        protect,
    )
    (call,) = net.calls
    model = SimpleNamespace(
        synthesizer=torch.nn.Linear(1, 1), version="v2", phone_dim=16, f0=f0, tgt_sr=40000
    )
    params = ConversionOptions(index_rate=index_rate, protect=protect)
    ours = prepare_piece(
        model,
        encoder,
        loaded if index_rate > 0 else None,
        audio,
        frames,
        pitch if f0 else None,
        pitchf if f0 else None,
        params,
    )
    feats, p_len = call[0], call[1]
    assert ours.frames == int(p_len[0]) == feats.shape[1]
    torch.testing.assert_close(ours.phone, feats[0].float(), atol=1e-5, rtol=1e-5)
    if f0:
        torch.testing.assert_close(ours.coarse, call[2][0])
        torch.testing.assert_close(ours.nsf, call[3][0])
    else:
        assert ours.coarse is None and len(call) == 3
