"""Long audio is decoded and high-passed in pieces (memory flat in song length), with the same
samples one pass over the whole gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from foundation import audio as audio_module
from foundation.audio import _highpass_coefficients, highpass_48hz, load_audio


def _song(seconds: float, sr: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    t = np.arange(int(seconds * sr)) / sr
    rumble = 0.3 * np.sin(2 * np.pi * 20 * t)  # below the cut-off
    tone = 0.2 * np.sin(2 * np.pi * 440 * t)
    noise = 0.05 * rng.standard_normal((len(t), channels))
    return (rumble + tone)[:, None] + noise


@pytest.mark.parametrize("sr", [16000, 44100])
def test_zero_phase_highpass_in_pieces_equals_one_pass(sr: int) -> None:
    x = _song(3 * audio_module.HIGHPASS_CHUNK / sr + 1.7, sr, 1)[:, 0].astype(np.float32)
    b, a = _highpass_coefficients(sr)
    whole = signal.filtfilt(b, a, x.astype(np.float64)).astype(np.float32)
    pieces = highpass_48hz(x, sr, zero_phase=True)
    assert pieces.shape == whole.shape and pieces.dtype == np.float32
    # The converter filters at 16 kHz: measured 4e-8 there. At 44.1 kHz the filter's
    # transfer-function form rounds at the 3e-6 level (poles nearer the unit circle), whole or not.
    assert np.max(np.abs(pieces - whole)) < (1e-6 if sr == 16000 else 1e-5)
    # In place (the converter's call: one copy of the song fewer), the very same samples.
    original = x.copy()
    in_place = highpass_48hz(x, sr, zero_phase=True, overwrite=True)
    assert in_place is x
    np.testing.assert_array_equal(in_place, pieces)
    kept = highpass_48hz(original, sr, zero_phase=True)  # without ``overwrite`` the input stays
    assert kept is not original and np.array_equal(kept, pieces)


def test_a_pieced_highpass_without_context_would_show() -> None:
    """The comparison above can fail: pieces filtered without context differ at the joins."""
    sr = 16000
    x = _song(3 * audio_module.HIGHPASS_CHUNK / sr, sr, 1)[:, 0]
    b, a = _highpass_coefficients(sr)
    chunk = audio_module.HIGHPASS_CHUNK
    naive = np.concatenate(
        [signal.filtfilt(b, a, x[i : i + chunk]) for i in range(0, len(x), chunk)]
    )
    assert np.max(np.abs(naive - signal.filtfilt(b, a, x))) > 1e-3


@pytest.mark.parametrize("channels", [1, 2])
def test_decoding_in_blocks_gives_the_files_mono_mix(
    channels: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audio_module, "DECODE_BLOCK", 1000)  # many blocks, a short last one
    song = _song(1.2345, 16000, channels).astype(np.float32)
    path = tmp_path / "song.flac"
    sf.write(path, song, 16000, subtype="PCM_24")
    stored, _ = sf.read(str(path), dtype="float32", always_2d=True)
    decoded = load_audio(path, 16000)
    assert decoded.dtype == np.float32 and decoded.shape == (len(song),)
    np.testing.assert_array_equal(decoded, stored.mean(axis=1).astype(np.float32))
