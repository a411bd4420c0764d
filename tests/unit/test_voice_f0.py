"""Pitch extractors on signals of known pitch, RVC's pitch encodings, and RMVPE loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.voice.f0 import (
    F0_METHODS,
    coarse_f0,
    get_f0_extractor,
    median_filter_f0,
    shift_f0,
)
from agents.voice.f0.base import in_chunks
from agents.voice.f0.rmvpe import (
    CENTS_OFFSET,
    N_CLASSES,
    LogMel,
    RmvpeConfig,
    RmvpeNet,
    salience_to_f0,
)
from agents.voice.f0.world_f0 import refine_f0, world_f0
from foundation.errors import StageError

SR = 16_000


def harmonic_tone(f0: float, seconds: float = 1.0, vibrato_cents: float = 0.0) -> np.ndarray:
    """A voice-like tone: five harmonics with falling amplitude, optional 5 Hz vibrato."""
    t = np.arange(int(SR * seconds)) / SR
    inst = f0 * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(inst) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.3 * tone).astype(np.float32)


@pytest.fixture(scope="module")
def extractors():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = get_f0_extractor(name)
        return cache[name]

    return get


@pytest.mark.parametrize(
    ("method", "tolerance"),
    [("harvest", 0.01), ("crepe-tiny", 0.01), ("fcpe", 0.01), ("dio", 0.03), ("pm", 0.03)],
)
@pytest.mark.parametrize("pitch", [146.8, 392.0])
def test_known_pitch_is_found(extractors, method, tolerance, pitch):
    audio = harmonic_tone(pitch)
    f0 = extractors(method).compute(audio)
    assert f0.shape == (len(audio) // 160 + 1,) and f0.dtype == np.float32
    voiced = f0[f0 > 0]
    assert len(voiced) >= 0.8 * len(f0), f"{method} left most frames unvoiced"
    assert abs(np.median(voiced) / pitch - 1) < tolerance
    assert voiced.min() >= 50 and voiced.max() <= 1100


@pytest.mark.parametrize("method", ["harvest", "crepe-tiny", "fcpe", "dio", "pm"])
def test_silence_is_unvoiced_and_lengths_follow_p_len(extractors, method):
    silence = np.zeros(SR // 2, dtype=np.float32)
    f0 = extractors(method).compute(silence)
    assert f0.shape == (SR // 2 // 160 + 1,)
    assert np.all(f0 == 0)
    tone = harmonic_tone(220.0, seconds=0.5)
    assert extractors(method).compute(tone, p_len=37).shape == (37,)
    assert extractors(method).compute(tone, p_len=60).shape == (60,)


def test_crepe_full_model_is_selectable():
    assert get_f0_extractor("crepe").model == "full"
    assert get_f0_extractor("crepe", crepe_model="tiny").model == "tiny"
    assert get_f0_extractor("crepe-tiny").name == "crepe-tiny"


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown f0 method"):
        get_f0_extractor("yin")
    assert "rmvpe" in F0_METHODS


def test_coarse_f0_is_rvcs_mel_scale():
    f0 = np.array([0.0, 30.0, 50.0, 440.0, 1100.0, 2000.0])
    coarse = coarse_f0(f0)
    mel = lambda hz: 1127 * np.log(1 + hz / 700)  # noqa: E731
    expected_440 = np.rint((mel(440) - mel(50)) * 254 / (mel(1100) - mel(50)) + 1)
    assert coarse.tolist() == [1, 1, 1, int(expected_440), 255, 255]
    sweep = coarse_f0(np.geomspace(50, 1100, 500))
    assert np.all(np.diff(sweep) >= 0) and sweep.min() == 1 and sweep.max() == 255


def test_shift_and_median_filter():
    f0 = np.array([0.0, 200.0, 220.0, 880.0, 220.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(shift_f0(f0, 12), f0 * 2)
    np.testing.assert_allclose(shift_f0(f0, -7)[1], 200 * 2 ** (-7 / 12), rtol=1e-6)
    assert shift_f0(f0, 5)[0] == 0
    smoothed = median_filter_f0(f0, 1)
    assert smoothed[3] == 220.0  # a one-frame octave jump is removed
    np.testing.assert_array_equal(median_filter_f0(f0, 0), f0)


# --------------------------------------------------------------------------------------------------
# RMVPE
# --------------------------------------------------------------------------------------------------

PUBLIC_KEYS = {
    # A few tensors of the public rmvpe.pt (E2E(4, 1, (2, 2))) and their shapes.
    "unet.encoder.bn.running_var": (1,),
    "unet.encoder.layers.0.conv.0.conv.0.weight": (16, 1, 3, 3),
    "unet.encoder.layers.0.conv.0.conv.1.num_batches_tracked": (),
    "unet.encoder.layers.0.conv.0.shortcut.weight": (16, 1, 1, 1),
    "unet.encoder.layers.4.conv.3.conv.3.weight": (256, 256, 3, 3),
    "unet.intermediate.layers.0.conv.0.shortcut.bias": (512,),
    "unet.intermediate.layers.3.conv.3.conv.4.running_mean": (512,),
    "unet.decoder.layers.0.conv1.0.weight": (512, 256, 3, 3),
    "unet.decoder.layers.0.conv2.0.shortcut.weight": (256, 512, 1, 1),
    "unet.decoder.layers.4.conv2.3.conv.0.weight": (16, 16, 3, 3),
    "cnn.weight": (3, 16, 3, 3),
    "fc.0.gru.weight_ih_l0": (768, 384),
    "fc.0.gru.weight_hh_l0_reverse": (768, 256),
    "fc.1.weight": (360, 512),
}


def test_rmvpe_network_has_the_public_state_dict_layout():
    with torch.device("meta"):
        net = RmvpeNet(RmvpeConfig())
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in PUBLIC_KEYS.items():
        assert shapes.get(key) == shape, key
    assert not any(k.startswith("unet.encoder.layers.1.conv.1.shortcut") for k in shapes)
    assert RmvpeConfig.from_state_dict(net.state_dict()) == RmvpeConfig()


def tiny_rmvpe(path, seed: int = 0):
    torch.manual_seed(seed)
    config = RmvpeConfig(n_layers=2, n_bottleneck=1, n_blocks=1, base_channels=2, gru_hidden=8)
    net = RmvpeNet(config)
    # Non-trivial batch-norm statistics, as a trained model has.
    for name, buffer in net.state_dict().items():
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
    torch.save(net.state_dict(), path)
    return path


def test_rmvpe_loads_a_public_layout_state_dict_and_tracks(tmp_path):
    path = tiny_rmvpe(tmp_path / "rmvpe.pt")
    extractor = get_f0_extractor("rmvpe", rmvpe_path=path)
    audio = harmonic_tone(220.0, seconds=0.73)
    f0 = extractor.compute(audio)
    assert f0.shape == (len(audio) // 160 + 1,)
    assert np.all((f0 == 0) | ((f0 >= 50) & (f0 <= 1100)))
    salience = extractor.salience(audio)
    assert salience.shape == (len(audio) // 160 + 1, N_CLASSES)
    assert np.all((salience >= 0) & (salience <= 1))
    assert extractor.compute(audio, p_len=50).shape == (50,)


def test_rmvpe_refuses_missing_and_unsafe_files(tmp_path):
    for path in (None, tmp_path / "absent.pt"):
        with pytest.raises(StageError) as err:
            get_f0_extractor("rmvpe", rmvpe_path=path)
        assert err.value.code == "model_not_found"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, evil)
    with pytest.raises(StageError) as err:
        get_f0_extractor("rmvpe", rmvpe_path=evil)
    assert err.value.code == "unsafe_model"


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_rmvpe_salience_decoding():
    target_hz = 440.0
    cents = 1200 * np.log2(target_hz / 10)
    bins = (cents - CENTS_OFFSET) / 20  # fractional bin of 440 Hz
    salience = np.exp(-0.5 * ((np.arange(N_CLASSES) - bins) / 1.5) ** 2)[None, :] * 0.9
    silent = np.full((1, N_CLASSES), 0.01)
    f0 = salience_to_f0(np.concatenate([salience, silent]))
    assert abs(1200 * np.log2(f0[0] / target_hz)) < 5  # within 5 cents
    assert f0[1] == 0


def test_rmvpe_log_mel_front_end():
    librosa = pytest.importorskip("librosa")
    mel = LogMel()
    reference = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)
    np.testing.assert_allclose(mel.mel_basis.numpy(), reference, atol=1e-6)
    tone = torch.from_numpy(np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32))
    spectrum = mel(tone[None])[0]
    assert spectrum.shape == (128, SR // 160 + 1)
    peak_band = int(spectrum[:, 50].argmax())
    centre_hz = (mel.mel_basis[peak_band] * torch.arange(513) * SR / 1024).sum() / mel.mel_basis[
        peak_band
    ].sum()
    assert abs(float(centre_hz) / 1000 - 1) < 0.05


# ---------------------------------------------------------------------------------------------
# long audio: neural trackers run in pieces (memory flat in song length)
# ---------------------------------------------------------------------------------------------


def _melody(seconds: float) -> np.ndarray:
    """Notes of 0.7 s (a new pitch each, vibrato) with 0.2 s rests: pitch changes and silences
    fall on every chunk boundary somewhere."""
    rng = np.random.default_rng(7)
    parts = []
    while sum(len(p) for p in parts) < seconds * SR:
        parts.append(harmonic_tone(float(rng.uniform(150, 700)), 0.7, vibrato_cents=40))
        parts.append(np.zeros(int(0.2 * SR), dtype=np.float32))
    return np.concatenate(parts)[: int(seconds * SR)]


@pytest.mark.parametrize("length", [16000 * 12, 16000 * 12 + 37, 16000 * 3 + 1])
def test_pieces_land_on_the_whole_tracks_frame_grid(length: int) -> None:
    audio = np.random.default_rng(1).standard_normal(length).astype(np.float32)

    def track(x: np.ndarray) -> np.ndarray:  # a frame's value: the sample at its centre (or 0)
        return np.pad(x, (0, 160))[::160][: len(x) // 160 + 1].copy()

    whole = track(audio)
    pieces = in_chunks(track, audio, chunk_s=1.3, context_s=0.5)
    assert pieces.shape == whole.shape
    np.testing.assert_array_equal(pieces, whole)


def test_fcpe_in_pieces_tracks_like_one_pass(extractors) -> None:
    fcpe = extractors("fcpe")
    audio = _melody(13.0)
    whole = fcpe._track(audio)[: len(audio) // 160 + 1]
    pieces = in_chunks(fcpe._track, audio, chunk_s=3.0)  # 4 boundaries, the default context
    assert pieces.shape == whole.shape
    voiced_whole, voiced_pieces = whole > 0, pieces > 0
    assert np.mean(voiced_whole == voiced_pieces) >= 0.995
    both = voiced_whole & voiced_pieces
    cents = 1200 * np.abs(np.log2(pieces[both] / whole[both]))
    # Measured: median 0.04, 99th percentile 0.27, max 1.2 cents (without context: 0.10, 7.9
    # and 31 cents, which this must catch).
    assert np.median(cents) < 0.2 and np.percentile(cents, 99) < 1.0 and cents.max() < 5.0


@pytest.mark.parametrize("tracker", ["dio", "harvest"])
def test_world_f0_tracks_a_known_pitch_on_its_frame_grid(tracker) -> None:
    audio = harmonic_tone(220.0, seconds=1.0)
    f0, times = world_f0(audio, SR, tracker, f0_floor=50.0, f0_ceil=1100.0, frame_period_ms=10.0)
    assert f0.dtype == np.float64 and f0.shape == times.shape
    np.testing.assert_allclose(times, np.arange(len(times)) * 0.01, atol=1e-9)
    assert len(times) == len(audio) // 160 + 1
    voiced = f0[f0 > 0]
    assert len(voiced) > 0.8 * len(f0)
    assert np.median(voiced) == pytest.approx(220.0, rel=0.01)


def test_world_f0_refines_with_stonemask_and_refuses_what_it_cannot_do() -> None:
    audio = harmonic_tone(220.0, seconds=1.0)
    f0, times = world_f0(audio, SR, "dio", f0_floor=50.0, f0_ceil=1100.0, frame_period_ms=10.0)
    # StoneMask pulls a rough estimate towards the signal's instantaneous frequency.
    rough = np.where(f0 > 0, 228.0, 0.0)
    refined = refine_f0(audio, SR, rough, times)
    inner = slice(10, -10)
    assert np.all(refined[inner][rough[inner] > 0] < 224.0)
    assert np.all(refined[rough == 0] == 0)
    with pytest.raises(ValueError):
        world_f0(audio, SR, "harvest", f0_floor=50, f0_ceil=1100, frame_period_ms=10, dio_speed=4)
    with pytest.raises(ValueError):
        world_f0(audio, SR, "pm", f0_floor=50, f0_ceil=1100, frame_period_ms=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        world_f0(np.zeros((160, 2)), SR, "dio", f0_floor=50, f0_ceil=1100, frame_period_ms=10)


def test_world_f0_analysis_is_written_once() -> None:
    """Only agents/voice/f0/world_f0.py calls pyworld's f0 trackers and StoneMask (tests may,
    as references)."""
    import ast

    from tests.unit.test_architecture import ROOT, project_files

    callers = set()
    for path in project_files():
        if path.relative_to(ROOT).parts[0] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"dio", "harvest", "stonemask"}
                and isinstance(node.value, ast.Name)
                and node.value.id in {"pyworld", "pw"}
            ):
                callers.add(str(path.relative_to(ROOT)))
    assert callers == {"agents/voice/f0/world_f0.py"}
