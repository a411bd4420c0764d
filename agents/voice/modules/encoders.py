"""Prior (content) encoder ``enc_p`` and posterior (spectrogram) encoder ``enc_q``."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from agents.voice.modules.attentions import AttentionEncoder
from agents.voice.modules.commons import sequence_mask
from agents.voice.modules.flows import WaveNet

PITCH_BINS = 256  # coarse pitch is quantised to 1..255 (0 = unvoiced)


class PriorEncoder(nn.Module):
    """Content features (+ coarse pitch) → prior mean and log-scale per frame (RVC TextEncoder)."""

    def __init__(
        self,
        phone_dim: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        use_pitch: bool,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.emb_phone = nn.Linear(phone_dim, hidden_channels)
        if use_pitch:
            self.emb_pitch = nn.Embedding(PITCH_BINS, hidden_channels)
        self.encoder = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden_channels), 0.1)
        x = x.transpose(1, -1)  # [b, hidden, t]
        x_mask = sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        mean, log_scale = torch.split(stats, self.out_channels, dim=1)
        return mean, log_scale, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram → sampled latent z (training only; not in inference checkpoints)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, spec: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = sequence_mask(lengths, spec.size(2)).unsqueeze(1).to(spec.dtype)
        x = self.enc(self.pre(spec) * mask, mask, g=g)
        stats = self.proj(x) * mask
        mean, log_scale = torch.split(stats, self.out_channels, dim=1)
        z = (mean + torch.randn_like(mean) * torch.exp(log_scale)) * mask
        return z, mean, log_scale, mask
