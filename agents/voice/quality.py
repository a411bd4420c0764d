"""How good a conversion is, in figures a person can read: the quality report of a job.

* **speaker similarity** — cosine similarity of Resemblyzer speaker embeddings (its weights ship
  in the package) of the converted vocals to the voice dataset, and beside it that of the source
  vocals: the first should be high, and well above the second;
* **f0 error** — median absolute difference in cents between the converted vocals' pitch and the
  source's shifted by the key applied, over frames voiced in both (the melody kept);
* **voiced kept** — the share of the source's voiced frames that are still voiced after
  conversion (notes not lost to noise or buzz);
* **key** — the semitones applied and how they were chosen.

Pitch is FCPE's (``torchfcpe`` ships its weights), on the 10 ms grid at 16 kHz. Everything here
runs on a CPU in a few seconds per minute of audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from foundation.logging import get_logger

log = get_logger(__name__)

ANALYSIS_SR = 16_000
# Frames this far below the loudest 10 ms frame are rests, not singing.
LEVEL_FLOOR_DB = 35.0
# Resemblyzer needs about this much voiced audio for a stable embedding.
MIN_EMBED_S = 1.0


@lru_cache(maxsize=1)
def _voice_encoder() -> Any:
    from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False)


@lru_cache(maxsize=1)
def _pitch_tracker() -> Any:
    from agents.voice.f0 import get_f0_extractor

    return get_f0_extractor("fcpe")


def to_analysis_rate(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 at :data:`ANALYSIS_SR`."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if sr != ANALYSIS_SR:
        from foundation.resample import resample

        x = resample(x, sr, ANALYSIS_SR)
    return np.ascontiguousarray(x, dtype=np.float32)


def speaker_embedding(clips: list[tuple[np.ndarray, int]]) -> np.ndarray | None:
    """One L2-normalised Resemblyzer embedding for the voice heard in ``clips``
    (``(audio, sample rate)`` pairs); None when there is too little voice to embed."""
    from resemblyzer import preprocess_wav

    encoder = _voice_encoder()
    wavs = []
    for audio, sr in clips:
        wav = preprocess_wav(to_analysis_rate(audio, sr), source_sr=ANALYSIS_SR)
        if len(wav) >= MIN_EMBED_S * ANALYSIS_SR:
            wavs.append(wav)
    if not wavs:
        return None
    utterances = [_embed_utterance(encoder, wav) for wav in wavs]
    embedding = np.mean(utterances, axis=0) if len(utterances) > 1 else utterances[0]
    return embedding / max(float(np.linalg.norm(embedding)), 1e-12)


PARTIALS_PER_BATCH = 64
"""Resemblyzer's 1.6 s partial utterances embedded at a time: its own ``embed_utterance`` runs
every partial of a song through the LSTM at once (about 0.5 GB for 10 minutes)."""


def _embed_utterance(encoder: Any, wav: np.ndarray) -> np.ndarray:
    """Resemblyzer's utterance embedding (the L2-normed mean of its partial utterances'
    embeddings, its own slicing and mel frames), the partials a batch at a time."""
    import torch
    from resemblyzer import audio

    wav_slices, mel_slices = encoder.compute_partial_slices(len(wav), 1.3, 0.75)
    if wav_slices[-1].stop >= len(wav):
        wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
    mel = audio.wav_to_mel_spectrogram(wav)
    total = np.zeros(0)
    for first in range(0, len(mel_slices), PARTIALS_PER_BATCH):
        batch = np.array([mel[s] for s in mel_slices[first : first + PARTIALS_PER_BATCH]])
        with torch.no_grad():
            partial = encoder(torch.from_numpy(batch).to(encoder.device)).cpu().numpy()
        total = partial.sum(axis=0) if not total.size else total + partial.sum(axis=0)
    raw = total / len(mel_slices)
    return raw / np.linalg.norm(raw, 2)


def similarity(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def pitch(audio: np.ndarray, sr: int) -> np.ndarray:
    """FCPE f0 (Hz, 0 unvoiced) per 10 ms; frames in rests (far below the loudest) are 0."""
    x = to_analysis_rate(audio, sr)
    f0 = np.asarray(_pitch_tracker().compute(x), dtype=np.float64)
    hop = ANALYSIS_SR // 100
    frames = len(f0)
    padded = np.pad(x.astype(np.float64), (hop // 2, frames * hop))
    level = np.sqrt(np.mean(padded[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-20)
    loud = 20 * np.log10(level) > 20 * np.log10(level.max()) - LEVEL_FLOOR_DB
    return np.where(loud, f0, 0.0)


def median_pitch_hz(f0: np.ndarray) -> float | None:
    voiced = np.asarray(f0)[np.asarray(f0) > 0]
    return float(np.median(voiced)) if voiced.size else None


def cents(a_hz: np.ndarray, b_hz: np.ndarray) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(a_hz, dtype=np.float64) / np.asarray(b_hz, np.float64))


def f0_error_cents(
    converted_f0: np.ndarray, source_f0: np.ndarray, semitones: float
) -> float | None:
    """Median |cents| between the converted pitch and the source's moved by ``semitones``,
    over frames voiced in both."""
    n = min(len(converted_f0), len(source_f0))
    a, b = np.asarray(converted_f0[:n]), np.asarray(source_f0[:n])
    both = (a > 0) & (b > 0)
    if not both.any():
        return None
    return float(np.median(np.abs(cents(a[both], b[both] * 2.0 ** (semitones / 12.0)))))


def voiced_kept(converted_f0: np.ndarray, source_f0: np.ndarray) -> float | None:
    """The share of the source's voiced frames that are voiced in the conversion."""
    n = min(len(converted_f0), len(source_f0))
    source_voiced = np.asarray(source_f0[:n]) > 0
    if not source_voiced.any():
        return None
    return float(np.mean(np.asarray(converted_f0[:n])[source_voiced] > 0))


def band_level_db(audio: np.ndarray, sr: int, band: tuple[float, float]) -> float:
    """Energy in ``band`` relative to the whole signal's, in dB (spectral balance)."""
    from scipy.signal import welch

    x = np.asarray(audio, dtype=np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    freqs, power = welch(x, fs=sr, nperseg=2048)
    inside = (freqs >= band[0]) & (freqs < band[1])
    total = float(power.sum())
    if total <= 0 or not inside.any():
        return -200.0
    return 10.0 * math.log10(max(float(power[inside].sum()), 1e-30) / total)


@dataclass(frozen=True)
class QualityFigures:
    speaker_similarity: float | None
    source_similarity: float | None
    f0_error_cents: float | None
    voiced_kept: float | None


def measure(
    source: np.ndarray,
    converted: np.ndarray,
    sr: int,
    semitones: float,
    voice_embedding: np.ndarray | None,
) -> QualityFigures:
    """The quality figures of one conversion (``source`` and ``converted`` at ``sr``)."""
    source_f0 = pitch(source, sr)
    converted_f0 = pitch(converted, sr)
    figures = QualityFigures(
        speaker_similarity=_rounded(
            similarity(speaker_embedding([(converted, sr)]), voice_embedding)
        ),
        source_similarity=_rounded(similarity(speaker_embedding([(source, sr)]), voice_embedding)),
        f0_error_cents=_rounded(f0_error_cents(converted_f0, source_f0, semitones), 1),
        voiced_kept=_rounded(voiced_kept(converted_f0, source_f0)),
    )
    log.info("conversion quality measured", **figures.__dict__)
    return figures


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
