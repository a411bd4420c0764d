"""Linear and mel spectrograms exactly as RVC's training computes them (HiFi-GAN convention).

Frames are centred by reflect-padding ``(n_fft - hop) / 2`` on each side and running the STFT
uncentred, so a clip of ``n * hop`` samples gives exactly ``n`` frames.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF

from agents.voice.configs import AudioConfig

_windows: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
_mel_bases: dict[
    tuple[int, int, int, float, float | None, torch.dtype, torch.device], torch.Tensor
] = {}


def linear_spectrogram(audio: torch.Tensor, config: AudioConfig) -> torch.Tensor:
    """[b, samples] → magnitude spectrogram [b, n_fft // 2 + 1, samples // hop]."""
    key = (config.win_length, audio.dtype, audio.device)
    if key not in _windows:
        _windows[key] = torch.hann_window(config.win_length, dtype=audio.dtype, device=audio.device)
    pad = (config.filter_length - config.hop_length) // 2
    padded = torch.nn.functional.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    stft = torch.stft(
        padded,
        config.filter_length,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=_windows[key],
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    # The small constant keeps the gradient of sqrt finite at silent bins.
    return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + 2e-7)


def spec_to_mel(spec: torch.Tensor, config: AudioConfig) -> torch.Tensor:
    """Magnitude spectrogram → log mel (Slaney mel scale and norm, as librosa's default)."""
    key = (
        config.filter_length,
        config.n_mel_channels,
        config.sampling_rate,
        config.mel_fmin,
        config.mel_fmax,
        spec.dtype,
        spec.device,
    )
    if key not in _mel_bases:
        fbanks = AF.melscale_fbanks(
            n_freqs=config.filter_length // 2 + 1,
            f_min=config.mel_fmin,
            f_max=config.mel_fmax if config.mel_fmax is not None else config.sampling_rate / 2,
            n_mels=config.n_mel_channels,
            sample_rate=config.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        _mel_bases[key] = fbanks.T.to(dtype=spec.dtype, device=spec.device)
    mel = torch.matmul(_mel_bases[key], spec)
    return torch.log(torch.clamp(mel, min=1e-5))


def mel_spectrogram(audio: torch.Tensor, config: AudioConfig) -> torch.Tensor:
    """[b, samples] → log mel [b, n_mels, samples // hop]."""
    return spec_to_mel(linear_spectrogram(audio, config), config)
