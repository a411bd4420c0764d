"""The WORLD fallback voice: profiles, key matching, envelope mapping, conversion in pieces."""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agents.trainer.profile import learn_profile
from agents.voice import world
from agents.voice.world import (
    GRID_HZ,
    EnvelopeMap,
    EnvelopeStats,
    VoiceProfile,
    analyse_f0_and_envelope,
    convert_world,
    fit_envelope_map,
    key_shift_semitones,
    plan_world,
)
from foundation.errors import StageError
from foundation.resample import resample
from foundation.signal import DiskSignal
from frontends.demo_audio import F0_HOP_S, speech_voice, sung_vocal, write

SR = 44100

pyworld = pytest.importorskip("pyworld")


@pytest.fixture(scope="module")
def target_profile(tmp_path_factory: pytest.TempPathFactory) -> VoiceProfile:
    """A profile learned from two recordings of espeak's 'en+f2' voice (different sentences)."""
    folder = tmp_path_factory.mktemp("dataset")
    files = [
        write(folder / "take1.wav", speech_voice(8.0, SR, voice="en+f2", seed=1), SR),
        # A lower-rate file: its missing top octave must not count as silence in the profile.
        write(folder / "take2.flac", speech_voice(8.0, 22050, voice="en+f2", seed=5), 22050),
    ]
    return learn_profile(files)


def _profile(log_f0_mean: float, envelope_db: np.ndarray | None = None) -> VoiceProfile:
    envelope = np.zeros_like(GRID_HZ) if envelope_db is None else envelope_db
    return VoiceProfile(
        log_f0_mean=log_f0_mean,
        log_f0_std=0.1,
        envelope_db=envelope,
        envelope_frames=np.full_like(GRID_HZ, 100.0),
        voiced_s=10.0,
    )


def _cents_error(audio: np.ndarray, sr: int, f0_ref: np.ndarray, semitones: int) -> np.ndarray:
    """Cents between the f0 heard in ``audio`` (Harvest) and ``f0_ref`` moved by ``semitones``,
    on frames voiced in both."""
    audio16k = resample(audio, sr, 16000).astype(np.float64)
    heard, _ = pyworld.harvest(
        audio16k, 16000, f0_floor=50.0, f0_ceil=1100.0, frame_period=F0_HOP_S * 1000
    )
    n = min(len(heard), len(f0_ref))
    expected = f0_ref[:n] * 2.0 ** (semitones / 12.0)
    both = (heard[:n] > 0) & (expected > 0)
    assert both.mean() > 0.4, "too few voiced frames to judge the melody"
    return 1200.0 * np.log2(heard[:n][both] / expected[both])


# --------------------------------------------------------------------------------------------------
# Profile file
# --------------------------------------------------------------------------------------------------


def test_profile_learned_from_dataset(target_profile: VoiceProfile) -> None:
    # espeak's 'en+f2' speaks around 190 Hz.
    assert 140.0 < target_profile.f0_mean_hz < 260.0
    assert target_profile.voiced_s > 5.0
    # Frequencies above 11 kHz come from the 44.1 kHz take only.
    low = target_profile.envelope_frames[GRID_HZ < 10000]
    high = target_profile.envelope_frames[(GRID_HZ > 11500) & (GRID_HZ < 21000)]
    assert low.min() > high.max() > 0
    assert target_profile.envelope_frames[GRID_HZ > 22000].max() == 0


def test_profile_round_trip(target_profile: VoiceProfile, tmp_path: Path) -> None:
    path = target_profile.save(tmp_path / "profile.npz")
    assert path.name == "profile.npz"
    assert world.is_profile_file(path)
    loaded = VoiceProfile.load(path)
    assert loaded.log_f0_mean == pytest.approx(target_profile.log_f0_mean)
    np.testing.assert_allclose(loaded.envelope_db, target_profile.envelope_db)
    np.testing.assert_allclose(loaded.envelope_frames, target_profile.envelope_frames)
    # Format 2: the pitch histogram (median), the long-term spectrum and the shape codebook.
    assert loaded.f0_median_hz == pytest.approx(target_profile.f0_median_hz)
    np.testing.assert_allclose(loaded.spectrum_db, target_profile.spectrum_db)
    assert target_profile.codebook is not None and len(target_profile.codebook) > 10
    np.testing.assert_allclose(loaded.codebook, target_profile.codebook)
    # And the voice's mean aperiodicity, measured up to 8 kHz (D4C runs at 16 kHz).
    assert target_profile.aperiodicity_frames is not None
    assert target_profile.aperiodicity_frames[GRID_HZ < 7800].min() > 0
    assert target_profile.aperiodicity_frames[GRID_HZ > 8000].max() == 0
    np.testing.assert_allclose(loaded.aperiodicity_db, target_profile.aperiodicity_db)


def test_profile_refuses_pickles_and_other_files(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as handle:
        np.savez(handle, kind=np.array([{"x": 1}], dtype=object))
    other = tmp_path / "other.npz"
    with open(other, "wb") as handle:
        np.savez(handle, weights=np.zeros(3))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    for path in (pickled, other, garbage):
        assert not world.is_profile_file(path)
        with pytest.raises(StageError) as caught:
            VoiceProfile.load(path)
        assert caught.value.code == "invalid_model"


def test_learn_profile_rejects_empty_and_unvoiced_datasets(tmp_path: Path) -> None:
    with pytest.raises(StageError) as caught:
        learn_profile([])
    assert caught.value.code == "dataset_empty"
    noise = np.random.default_rng(0).standard_normal(SR * 2).astype(np.float32) * 0.01
    with pytest.raises(StageError) as caught:
        learn_profile([write(tmp_path / "noise.wav", noise, SR)])
    assert caught.value.code == "dataset_too_short"


# --------------------------------------------------------------------------------------------------
# The decisions: key and envelope map
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_hz", "target_hz", "f0_up_key", "expected"),
    [
        (300.0, 120.0, 0, -12),  # a woman's song, a man's voice: one octave down
        (150.0, 330.0, 0, 12),  # and the other way
        (300.0, 220.0, 0, 0),  # 0.45 octave apart: the nearest octave is this one
        (300.0, 200.0, 0, -12),  # 0.58 octave apart: one down is nearer
        (705.0, 352.0, 0, -12),  # the soprano over a tenor's voice
        (350.0, 110.0, 0, -24),  # 1.67 octaves: two down is nearest
        (300.0, 120.0, -12, -12),  # the user already moved it down: nothing added
        (300.0, 120.0, 2, -10),  # the user's transpose is kept, octaves added
    ],
)
def test_key_shift_is_whole_octaves_plus_transpose(
    source_hz: float, target_hz: float, f0_up_key: int, expected: int
) -> None:
    source, target = _profile(math.log(source_hz)), _profile(math.log(target_hz))
    assert key_shift_semitones(source, target, f0_up_key, auto_key=True) == expected
    assert key_shift_semitones(source, target, f0_up_key, auto_key=False) == f0_up_key


def test_key_matching_uses_the_median_pitch_not_the_mean() -> None:
    """A median from the pitch histogram decides: a few wild frames (octave errors, a high
    squeak) move a mean, not a median."""
    from agents.voice.world import F0_FLOOR_HZ, HISTOGRAM_BINS, HISTOGRAM_CENTS

    def histogram(hz: float, frames: float) -> np.ndarray:
        counts = np.zeros(HISTOGRAM_BINS)
        counts[int(1200 * math.log2(hz / F0_FLOOR_HZ) / HISTOGRAM_CENTS)] = frames
        return counts

    # Source mostly at 705 Hz with a third of its frames misread an octave low.
    source = replace(
        _profile(math.log(598.0)), f0_histogram=histogram(705.0, 200) + histogram(352.0, 90)
    )
    target = replace(_profile(math.log(352.0)), f0_histogram=histogram(352.0, 100))
    assert source.f0_median_hz == pytest.approx(705.0, rel=0.01)
    assert key_shift_semitones(source, target, 0, auto_key=True) == -12


def test_envelope_map_recovers_a_formant_warp() -> None:
    # A smooth envelope with formant-like bumps, and the same voice with formants 12% higher.
    def envelope(scale: float) -> np.ndarray:
        bumps = sum(
            20.0 * np.exp(-0.5 * ((GRID_HZ - f * scale) / (80.0 + 0.05 * f)) ** 2)
            for f in (500.0, 1500.0, 2500.0, 3500.0)
        )
        return bumps - 6.0 * np.log2(1.0 + GRID_HZ / 500.0)

    source, target = _profile(5.0, envelope(1.0)), _profile(5.0, envelope(1.12))
    mapping = fit_envelope_map(source, target)
    assert mapping.warp == pytest.approx(1.12, rel=0.02)
    assert fit_envelope_map(source, source).warp == pytest.approx(1.0)

    # Applied to frames of the source, the average lands near the target within the band.
    sr, bins = 16000, 513
    bins_hz = np.arange(bins) * sr / 1024
    frames = np.tile(10.0 ** (np.interp(bins_hz, GRID_HZ, envelope(1.0)) / 10.0), (4, 1))
    mapped_db = 10.0 * np.log10(mapping.apply(frames, sr)[0])
    band = (bins_hz > 300) & (bins_hz < 5000)
    wanted = np.interp(bins_hz, GRID_HZ, envelope(1.12))
    before = np.interp(bins_hz, GRID_HZ, envelope(1.0))
    offset = np.mean(mapped_db[band] - wanted[band])
    error_after = np.abs(mapped_db[band] - wanted[band] - offset).mean()
    error_before = np.abs(before[band] - wanted[band] - np.mean(before[band] - wanted[band])).mean()
    assert error_after < 0.3 * error_before
    # Identity map leaves frames alone.
    np.testing.assert_allclose(EnvelopeMap.identity().apply(frames, sr), frames, rtol=1e-6)


def test_codebook_search_compares_shapes_at_the_frames_pitch() -> None:
    """A high note blurs its envelope: the search compares it with the codebook blurred at the
    same pitch, and hands back the sharp entry it came from, not a blurred look-alike."""
    vowel = sum(
        15.0 * np.exp(-0.5 * ((world.SHAPE_HZ - f) / 90.0) ** 2) for f in (500.0, 1500.0, 2600.0)
    )
    blurred = world.degraded_shapes(vowel[None, :], 880.0)[0]
    # Blurring flattens the formant peaks, and leaves a flat shape flat.
    assert np.ptp(blurred) < 0.8 * np.ptp(vowel)
    flat = world.degraded_shapes(np.zeros((1, len(world.SHAPE_HZ))), 880.0)
    np.testing.assert_allclose(flat, 0.0, atol=1e-9)
    # The dataset holds the sharp vowel and a blurred one (another vowel, say).
    codebook = np.stack([vowel, blurred + 0.5])
    frames = np.tile(blurred, (6, 1))
    pitch = np.full(len(frames), 880.0)  # A5, on a pitch class
    plain = np.argmin(((frames[:1, None, :] - codebook[None]) ** 2).sum(axis=2))
    assert plain == 1  # compared as they are, the blurred frame takes the blurred entry
    retrieved = world._retrieve(frames, pitch, codebook)
    np.testing.assert_allclose(retrieved, np.tile(vowel, (6, 1)), atol=0.05)


def test_aperiodicity_moves_onto_the_voices_average() -> None:
    source = replace(
        _profile(5.0),
        aperiodicity_db=np.where(GRID_HZ < 4000, -20.0, -5.0),
        aperiodicity_frames=np.where(GRID_HZ <= 8000, 100.0, 0.0),
    )
    target = replace(source, aperiodicity_db=np.where(GRID_HZ < 4000, -26.0, -5.0))
    gain = world.aperiodicity_gain_db(source, target)
    assert gain[GRID_HZ < 3000] == pytest.approx(-6.0)
    assert gain[GRID_HZ > 5000] == pytest.approx(0.0)
    # Voiced frames only, and never above fully aperiodic.
    sr, f0 = 16000, np.array([0.0, 300.0])
    aperiodicity = np.full((2, 513), 0.9)
    mapped = world._map_aperiodicity(aperiodicity, f0, sr, -gain)
    bins_hz = np.arange(513) * sr / 1024
    np.testing.assert_allclose(mapped[0], 0.9)
    assert mapped[1][bins_hz < 3000] == pytest.approx(1.0)
    # A profile without aperiodicity (learned before it was kept) changes nothing.
    assert not np.any(world.aperiodicity_gain_db(source, _profile(5.0)))


def test_analysis_in_pieces_matches_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    audio, _ = sung_vocal(5.0, SR, seed=2)
    whole = analyse_f0_and_envelope(audio, SR, EnvelopeStats())
    monkeypatch.setattr(world, "PIECE_S", 1.0)
    monkeypatch.setattr(world, "CUT_SEARCH_S", 0.3)
    pieces = analyse_f0_and_envelope(audio, SR, EnvelopeStats())
    assert pieces.shape == whole.shape
    # Same frame grid: DIO agrees with itself except for a few frames near the cuts.
    agree = np.isclose(pieces, whole, rtol=0.02) | ((pieces == 0) & (whole == 0))
    assert agree.mean() > 0.95


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------


def test_conversion_moves_the_voice_toward_the_target(target_profile: VoiceProfile) -> None:
    resemblyzer = pytest.importorskip("resemblyzer")
    encoder = resemblyzer.VoiceEncoder(device="cpu", verbose=False)

    def embedding(audio: np.ndarray) -> np.ndarray:
        wav = resemblyzer.preprocess_wav(resample(audio, SR, 16000), source_sr=16000)
        return np.asarray(encoder.embed_utterance(wav))

    source = speech_voice(6.0, SR, voice="en+m3", seed=3)
    held_out_target = speech_voice(6.0, SR, voice="en+f2", seed=2)
    converted = convert_world(source, SR, target_profile)
    assert converted.shape == source.shape
    assert converted.dtype == np.float32
    reference = embedding(held_out_target)
    before = float(reference @ embedding(source))
    after = float(reference @ embedding(converted))
    assert after > before + 0.05, (before, after)


@pytest.mark.parametrize(("f0_up_key", "auto_key"), [(0, True), (3, False)])
def test_conversion_keeps_the_melody(
    target_profile: VoiceProfile, f0_up_key: int, auto_key: bool
) -> None:
    vocals, f0_sung = sung_vocal(4.0, SR, voice="en+m3", seed=4)
    plan = plan_world(vocals, SR, target_profile, f0_up_key, auto_key)
    assert plan.semitones % 12 == f0_up_key % 12
    converted = convert_world(vocals, SR, target_profile, f0_up_key, auto_key)
    cents = _cents_error(converted, SR, f0_sung, plan.semitones)
    assert np.median(np.abs(cents)) < 50.0


def test_long_vocals_are_converted_in_pieces(
    target_profile: VoiceProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world, "PIECE_S", 1.0)
    monkeypatch.setattr(world, "CUT_SEARCH_S", 0.3)
    vocals, f0_sung = sung_vocal(4.0, SR, voice="en+m3", seed=6)
    seen: list[float] = []
    converted = convert_world(
        vocals, SR, target_profile, 2, auto_key=False, progress=lambda f, _: seen.append(f)
    )
    assert len(converted) == len(vocals)
    assert len(seen) >= 6 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    cents = _cents_error(converted, SR, f0_sung, 2)
    assert np.median(np.abs(cents)) < 50.0
    # No gaps at the joins: every 50 ms window where the source sings has sound in the output.
    window = SR // 20

    def loud(x: np.ndarray) -> np.ndarray:
        frames = x[: len(x) // window * window].reshape(-1, window)
        return np.sqrt(np.mean(frames**2, axis=1))

    singing = loud(vocals) > 0.05
    assert np.all(loud(converted)[singing] > 0.01)


@pytest.mark.parametrize(
    ("name", "change", "what"),
    [
        ("spectrum", "drop_frames", "voice spectrum"),
        ("aperiodicity", "drop_frames", "aperiodicity"),
        ("aperiodicity", "nan", "aperiodicity"),
        ("spectrum", "short", "voice spectrum"),
    ],
)
def test_a_profile_with_a_broken_optional_array_is_refused(
    target_profile: VoiceProfile, tmp_path: Path, name: str, change: str, what: str
) -> None:
    path = target_profile.save(tmp_path / "profile.npz")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    if change == "drop_frames":
        del arrays[f"{name}_frames"]
    elif change == "nan":
        arrays[f"{name}_db"] = np.full_like(arrays[f"{name}_db"], np.nan)
    else:
        arrays[f"{name}_db"] = arrays[f"{name}_db"][:-1]
    broken = tmp_path / "broken.npz"
    np.savez(broken, **arrays)
    with pytest.raises(StageError, match=f"malformed {what}") as caught:
        VoiceProfile.load(broken)
    assert caught.value.code == "invalid_model"


# --------------------------------------------------------------------------------------------------
# Long songs: the song-length buffers on disk
# --------------------------------------------------------------------------------------------------


def test_the_eq_block_by_block_is_the_eq_of_the_whole(target_profile: VoiceProfile) -> None:
    """Measured by whole 256-frame blocks and filtered with the FIR's context, the EQ of a
    song longer than several blocks is the one-pass EQ (same frames, same taps)."""
    from scipy.signal import firwin2, oaconvolve

    audio = np.tile(speech_voice(4.0, SR, voice="en+m3", seed=8), 4)[
        : 3 * world.SPECTRUM_BLOCK + 777
    ]
    measured = world.LongTermSpectrum()
    measured.add(audio, SR)
    correction = world.spectrum_correction_db(measured, target_profile)
    assert np.any(correction)
    nyquist = SR / 2.0
    freqs = np.concatenate((GRID_HZ[nyquist > GRID_HZ], [nyquist]))
    taps = firwin2(
        world.EQ_TAPS, freqs / nyquist, 10.0 ** (np.interp(freqs, GRID_HZ, correction) / 20)
    )
    whole = oaconvolve(audio.astype(np.float64), taps, mode="same")
    blocks = world.match_spectrum(audio, SR, target_profile)
    assert blocks.shape == whole.shape
    assert np.max(np.abs(blocks - whole)) < 1e-9 * np.max(np.abs(whole))


def test_world_through_disk_signals_gives_the_same_samples(
    target_profile: VoiceProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world, "PIECE_S", 1.0)
    monkeypatch.setattr(world, "CUT_SEARCH_S", 0.3)
    vocals, _ = sung_vocal(4.0, SR, voice="en+m3", seed=9)
    in_memory, report = world.convert_world_with_report(vocals, SR, target_profile, 2, False)
    source = DiskSignal(len(vocals), tmp_path)
    source[:] = vocals
    on_disk, again = world.convert_world_with_report(
        source, SR, target_profile, 2, False, scratch=tmp_path
    )
    assert isinstance(in_memory, np.ndarray) and isinstance(on_disk, DiskSignal)
    assert again == report and len(on_disk) == len(vocals)
    np.testing.assert_array_equal(on_disk.to_numpy(), in_memory)
    assert list(tmp_path.iterdir()) == []  # nothing left behind: the files are unlinked


def _world_traced_peak(seconds: int, profile: VoiceProfile, tmp_path: Path) -> int:
    """Peak traced bytes converting ``seconds`` of vocals that come in 15 s phrases (13 s sung,
    2 s rest), so every piece is one phrase whatever the song's length."""
    sr = 16000
    phrase = np.concatenate(
        [sung_vocal(13.0, sr, voice="en+m3", seed=10)[0], np.zeros(2 * sr, dtype=np.float32)]
    )
    assert len(phrase) == world.PIECE_S * sr
    vocals = DiskSignal(seconds * sr, tmp_path)
    for first in range(0, len(vocals), len(phrase)):
        vocals[first : first + len(phrase)] = phrase[: len(vocals) - first]
    tracemalloc.start()
    try:
        converted, _ = world.convert_world_with_report(
            vocals, sr, profile, 0, False, f0_method="dio", scratch=tmp_path
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(converted) == len(vocals)
    return peak


def test_world_memory_does_not_grow_with_the_song(
    target_profile: VoiceProfile, tmp_path: Path
) -> None:
    """Four times the song, and the peak grows by less than one float32 copy of the extra
    audio (measured: a third of one, the frame-rate pitch track and which piece is the largest;
    before: about ten copies, the float64 input, output and EQ buffers, and the song's own frame
    shapes for a codebook it never used)."""
    short = _world_traced_peak(30, target_profile, tmp_path)
    long = _world_traced_peak(120, target_profile, tmp_path)
    assert long - short < 90 * 16000 * 4
