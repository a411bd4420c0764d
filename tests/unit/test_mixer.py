"""Mixer stage logic: stem alignment, gains, effects, key shift, loudness, encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from pydantic import ValidationError
from scipy.signal import resample_poly

from agents.mixer.effects import EFFECTS, VOCAL_CHAIN, apply_chain, get_effect, vocal_chain
from agents.mixer.loudness import normalise, true_peak_db
from agents.mixer.mix import STEM_LENGTH_TOLERANCE_S, Stem, align_stems, combine
from agents.mixer.stage import mix_track
from foundation import encode as encoding
from foundation.audio import decode
from foundation.errors import StageError
from foundation.probe import probe
from schemas.events import GAIN_DB_RANGE, MixOptions, OutputOptions

RATE = 44100


# ---------------------------------------------------------------------------------------------
# helpers (also used by test_mixer_agent.py)
# ---------------------------------------------------------------------------------------------


def tone(freq: float, seconds: float, rate: int = RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stereo(mono: np.ndarray) -> np.ndarray:
    return np.stack([mono, mono], axis=1)


def noise(seconds: float, rate: int = RATE, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal((int(seconds * rate), 2))).astype(np.float32)


def write_stem(path: Path, audio: np.ndarray, rate: int = RATE) -> Path:
    sf.write(str(path), audio, rate)
    return path


def rms_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))))


def dominant_hz(audio: np.ndarray, rate: int = RATE) -> float:
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size), n=8 * mono.size))
    return float(np.argmax(spectrum) * rate / (8 * mono.size))


def lufs(audio: np.ndarray, rate: int = RATE) -> float:
    return float(pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64)))


def oversampled_peak_db(audio: np.ndarray, factor: int = 8) -> float:
    """Independent true-peak check: finer oversampling than the code under test uses."""
    return float(20 * np.log10(np.abs(resample_poly(audio, factor, 1, axis=0)).max()))


def drum_loop(seconds: float, rate: int = RATE) -> np.ndarray:
    """A hot, peaky stem: kick-like hits peaking above 0 dBFS over a noise bed.

    Peak-to-loudness ratio ~16 dB: at -14 LUFS its peaks would sit near +2 dBTP, so a -1 dBTP
    ceiling needs a few dB of limiting, as a dynamic master would.
    """
    t = np.arange(int(seconds * rate)) / rate
    hits = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.5):
        local = t - start
        mask = local >= 0
        hits[mask] += np.sin(2 * np.pi * 60 * local[mask]) * np.exp(-local[mask] / 0.03)
    return stereo((1.4 * hits).astype(np.float32)) + noise(seconds, rate, amplitude=0.1, seed=7)


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------


def test_stems_at_different_rates_and_lengths_are_aligned_and_padded() -> None:
    vocals = Stem(tone(440, 2.0, 40000)[:, None], 40000)  # mono, converter rate
    accompaniment = Stem(noise(2.3), RATE)

    aligned, rate = align_stems({"vocals": vocals, "accompaniment": accompaniment})

    assert rate == RATE
    assert aligned["vocals"].shape == aligned["accompaniment"].shape == (int(2.3 * RATE), 2)
    # Resampling kept the pitch, and the shorter stem ends in padding, not in stretched audio.
    assert dominant_hz(aligned["vocals"][: 2 * RATE]) == pytest.approx(440, rel=0.002)
    assert not aligned["vocals"][int(2.05 * RATE) :].any()


def test_stems_differing_beyond_tolerance_are_a_stem_mismatch() -> None:
    vocals = Stem(stereo(tone(440, 3.0)), RATE)
    accompaniment = Stem(noise(3.0 + STEM_LENGTH_TOLERANCE_S + 0.2), RATE)

    with pytest.raises(StageError) as error:
        align_stems({"vocals": vocals, "accompaniment": accompaniment})
    assert error.value.code == "stem_mismatch"


# ---------------------------------------------------------------------------------------------
# gains, effects, key shift
# ---------------------------------------------------------------------------------------------


def test_each_stem_comes_out_at_its_gain_before_normalisation() -> None:
    mix = MixOptions(effects=False)  # defaults: vocals -4, backing -6, accompaniment -7 dB
    level = rms_db(stereo(tone(440, 1.0)))
    silence = np.zeros((RATE, 2), dtype=np.float32)

    for name, gain in (
        ("vocals", mix.vocals_gain_db),
        ("backing_vocals", mix.backing_gain_db),
        ("accompaniment", mix.accompaniment_gain_db),
    ):
        stems = {"vocals": silence, "accompaniment": silence, "backing_vocals": silence}
        stems[name] = stereo(tone(440, 1.0))
        out = combine(stems, RATE, mix)
        assert rms_db(out) - level == pytest.approx(gain, abs=0.01), name

    custom = MixOptions(effects=False, vocals_gain_db=0.0, accompaniment_gain_db=-12.0)
    out_vocals = combine({"vocals": stereo(tone(440, 1.0)), "accompaniment": silence}, RATE, custom)
    out_backing = combine(
        {"vocals": silence, "accompaniment": stereo(tone(440, 1.0))}, RATE, custom
    )
    assert rms_db(out_vocals) - rms_db(out_backing) == pytest.approx(12.0, abs=0.01)


def test_effects_off_is_the_identity_chain() -> None:
    mix = MixOptions(effects=False, vocals_gain_db=0.0, accompaniment_gain_db=-120.0)
    vocals = noise(1.0, seed=3)

    assert vocal_chain(mix) == []
    assert apply_chain(vocal_chain(mix), vocals, RATE, mix) is vocals
    out = combine({"vocals": vocals, "accompaniment": np.zeros_like(vocals)}, RATE, mix)
    np.testing.assert_allclose(out, vocals, atol=1e-6)


def test_effects_on_run_highpass_compressor_reverb_in_order() -> None:
    mix = MixOptions(effects=True)
    assert [effect.name for effect in vocal_chain(mix)] == list(VOCAL_CHAIN)
    assert VOCAL_CHAIN == ("highpass", "compressor", "reverb")
    assert set(VOCAL_CHAIN) <= set(EFFECTS)
    with pytest.raises(ValueError):
        get_effect("chorus")

    # The high-pass takes out rumble and leaves the singing range.
    rumble, voice = stereo(tone(25, 1.0)), stereo(tone(440, 1.0))
    highpass = get_effect("highpass")
    assert rms_db(highpass(rumble, RATE, mix)[RATE // 4 :]) < rms_db(rumble) - 10
    assert rms_db(highpass(voice, RATE, mix)[RATE // 4 :]) == pytest.approx(rms_db(voice), abs=0.5)

    # The compressor narrows the level gap between a loud and a quiet phrase.
    loud_quiet = np.concatenate(
        [stereo(tone(440, 1.0, amplitude=0.9)), stereo(tone(440, 1.0, amplitude=0.05))]
    )
    squeezed = get_effect("compressor")(loud_quiet, RATE, mix)
    gap_in = rms_db(loud_quiet[:RATE]) - rms_db(loud_quiet[RATE:])
    gap_out = rms_db(squeezed[RATE // 2 : RATE]) - rms_db(squeezed[RATE + RATE // 2 :])
    assert gap_out < gap_in - 3

    # The reverb leaves a tail after the sound stops; no reverb when its wet level is zero.
    burst = np.concatenate([stereo(tone(440, 0.3)), np.zeros((RATE, 2), dtype=np.float32)])
    tail = get_effect("reverb")(burst, RATE, mix)[int(0.4 * RATE) :]
    assert rms_db(tail) > -60
    dry = get_effect("reverb")(burst, RATE, MixOptions(reverb_wet=0.0))
    assert dry is burst


@pytest.mark.parametrize("semitones", [3, -5])
def test_key_shift_moves_pitch_by_the_semitone_ratio(semitones: int) -> None:
    accompaniment = stereo(tone(440, 2.0))
    shifted = get_effect("key_shift")(accompaniment, RATE, MixOptions(key_shift=semitones))

    assert shifted.shape == accompaniment.shape
    middle = shifted[RATE // 2 : 3 * RATE // 2]
    assert dominant_hz(middle) == pytest.approx(440 * 2 ** (semitones / 12), rel=0.005)


def test_key_shift_applies_to_accompaniment_and_backing_not_lead_vocals() -> None:
    mix = MixOptions(effects=False, key_shift=2, vocals_gain_db=0, accompaniment_gain_db=-120)
    vocals = stereo(tone(440, 2.0))
    out = combine({"vocals": vocals, "accompaniment": stereo(tone(300, 2.0))}, RATE, mix)
    assert dominant_hz(out[RATE // 2 : 3 * RATE // 2]) == pytest.approx(440, rel=0.002)

    mix = MixOptions(effects=False, key_shift=2, vocals_gain_db=-120, backing_gain_db=0)
    silence = np.zeros_like(vocals)
    out = combine(
        {"vocals": silence, "accompaniment": silence, "backing_vocals": vocals}, RATE, mix
    )
    assert dominant_hz(out[RATE // 2 : 3 * RATE // 2]) == pytest.approx(
        440 * 2 ** (2 / 12), rel=0.005
    )

    assert get_effect("key_shift")(vocals, RATE, MixOptions(key_shift=0)) is vocals


# ---------------------------------------------------------------------------------------------
# loudness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [-14.0, -20.0])
def test_loudness_target_is_reached(target: float) -> None:
    music = noise(4.0, amplitude=0.02) + stereo(tone(220, 4.0, amplitude=0.05))

    result = normalise(music, RATE, target, -1.0)

    assert lufs(result.audio) == pytest.approx(target, abs=0.5)
    assert result.loudness_lufs == pytest.approx(lufs(result.audio), abs=0.01)
    assert oversampled_peak_db(result.audio) <= -1.0 + 0.1


def test_hot_input_is_limited_under_the_true_peak_ceiling_at_target_loudness() -> None:
    hot = drum_loop(4.0)
    assert np.abs(hot).max() > 1.0 and true_peak_db(hot) > 0
    # Gain alone cannot do it: at -14 LUFS the peaks would be over the ceiling by > 2 dB.
    assert true_peak_db(hot) - lufs(hot) > 13.0 + 2.0

    result = normalise(hot, RATE, -14.0, -1.0)

    assert oversampled_peak_db(result.audio) <= -1.0 + 0.1
    assert np.abs(result.audio).max() < 1.0  # no clipping
    assert lufs(result.audio) == pytest.approx(-14.0, abs=0.5)
    assert result.true_peak_db <= -1.0


def test_when_the_ceiling_wins_the_achieved_loudness_is_reported() -> None:
    # Isolated clicks: reaching -5 LUFS under a -6 dBTP ceiling is impossible without crushing them.
    clicks = np.zeros((4 * RATE, 2), dtype=np.float32)
    clicks[:: RATE // 2] = 0.9

    result = normalise(clicks, RATE, -5.0, -6.0)

    assert oversampled_peak_db(result.audio) <= -6.0 + 0.1
    assert result.loudness_lufs is not None and result.loudness_lufs < -5.5
    assert result.loudness_lufs == pytest.approx(lufs(result.audio), abs=0.01)


def test_true_peak_finds_peaks_between_samples_up_to_the_top_octave() -> None:
    t = np.arange(RATE)
    fade = np.minimum(1.0, np.minimum(t, RATE - 1 - t) / 2000)
    # A tone at a quarter of the rate, sampled 45 degrees off its crests: samples at -3 dB.
    quarter = (0.5 * np.sin(np.pi / 2 * t + np.pi / 4) * fade).astype(np.float32)
    assert 20 * np.log10(np.abs(quarter).max() / 0.5) < -2.9
    assert true_peak_db(quarter) == pytest.approx(20 * np.log10(0.5), abs=0.05)
    # A 21 kHz tone (over 95% of Nyquist): the true peak is never read under the sample peak,
    # as a resampler rolling off below Nyquist would read it (see agents/mixer/loudness.py).
    top = (0.5 * np.cos(2 * np.pi * 21000 / RATE * t + np.pi / 21) * fade).astype(np.float32)
    sample_peak_db = 20 * np.log10(np.abs(top).max())
    assert sample_peak_db - 0.05 <= true_peak_db(top) <= sample_peak_db + 0.1


# ---------------------------------------------------------------------------------------------
# encoding and the stage function
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "m4a"])
def test_each_format_encodes_and_decodes_with_duration_and_tags(fmt: str, tmp_path: Path) -> None:
    audio = stereo(tone(440, 1.5))
    out = encoding.encode(
        audio, RATE, tmp_path / f"song.{fmt}", fmt, bitrate="128k", title="Café Song", artist="Ana"
    )

    info = probe(out)
    assert info.duration_s == pytest.approx(1.5, abs=0.06)  # lossy: encoder padding
    assert info.tags["title"] == "Café Song" and info.tags["artist"] == "Ana"
    assert info.channels == 2
    decoded, rate = decode(out)
    assert rate == RATE
    assert decoded.shape[0] / rate == pytest.approx(1.5, abs=0.06)
    assert dominant_hz(decoded) == pytest.approx(440, rel=0.005)
    if fmt == "mp3":
        assert info.codec == "mp3" and 110_000 < 8 * out.stat().st_size / 1.5 < 150_000


def test_unsupported_format_is_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(StageError) as error:
        encoding.encode(stereo(tone(440, 0.5)), RATE, tmp_path / "x.ogg", "ogg")
    assert error.value.code == "unsupported_format"

    # The stage refuses it before touching any stem (these paths do not even exist).
    output = OutputOptions.model_construct(format="ogg", bitrate="192k", title=None, artist=None)
    missing = {"vocals": tmp_path / "none.flac", "accompaniment": tmp_path / "none2.flac"}
    with pytest.raises(StageError) as error:
        mix_track(missing, MixOptions(), output, tmp_path / "x.ogg")
    assert error.value.code == "unsupported_format"


def test_mix_track_writes_a_normalised_tagged_track(tmp_path: Path) -> None:
    stems = {
        "vocals": write_stem(tmp_path / "v.flac", tone(330, 3.0, 40000), 40000),
        "accompaniment": write_stem(tmp_path / "a.flac", drum_loop(3.0) * 0.7),
        "backing_vocals": write_stem(tmp_path / "b.flac", stereo(tone(495, 2.8))),
    }
    steps: list[tuple[float, str]] = []

    result = mix_track(
        stems,
        MixOptions(key_shift=1),
        OutputOptions(format="wav", title="Cover", artist="Me"),
        tmp_path / "cover.wav",
        lambda fraction, message: steps.append((fraction, message)),
    )

    audio, rate = sf.read(str(result.path), always_2d=True)
    assert rate == RATE and audio.shape == (3 * RATE, 2)
    assert result.duration_s == pytest.approx(3.0, abs=0.001)
    assert result.loudness_lufs == pytest.approx(lufs(audio), abs=0.05)
    assert result.loudness_lufs == pytest.approx(-14.0, abs=0.5)
    assert result.true_peak_db <= -1.0 + 0.05
    assert np.abs(audio).max() < 1.0
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0


@pytest.mark.parametrize("gain", GAIN_DB_RANGE)
def test_every_allowed_gain_gives_a_normalised_track(gain: float, tmp_path: Path) -> None:
    stems = {
        "vocals": write_stem(tmp_path / "v.flac", tone(330, 2.0, 40000), 40000),
        "accompaniment": write_stem(tmp_path / "a.flac", drum_loop(2.0) * 0.7),
    }
    mix = MixOptions(vocals_gain_db=gain, accompaniment_gain_db=gain)
    result = mix_track(stems, mix, OutputOptions(format="wav"), tmp_path / "cover.wav")
    audio, _ = sf.read(str(result.path), always_2d=True)
    assert np.isfinite(audio).all() and np.abs(audio).max() < 1.0
    assert result.true_peak_db <= -1.0 + 0.05


@pytest.mark.parametrize("field", ["vocals_gain_db", "backing_gain_db", "accompaniment_gain_db"])
def test_a_gain_outside_the_range_is_refused_when_the_event_is_read(field: str) -> None:
    low, high = GAIN_DB_RANGE
    for gain in (low - 1, high + 1, 1e300):
        with pytest.raises(ValidationError, match=field):
            MixOptions.model_validate({field: gain})
