"""Small tensor helpers shared by the synthesizer parts."""

from __future__ import annotations

import torch


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of a dilated odd-sized convolution."""
    return (kernel_size * dilation - dilation) // 2


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean [batch, max_length] mask, True inside each sequence."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: torch.Tensor, starts: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Per-item window ``x[i, ..., starts[i] : starts[i] + segment_size]`` on the last axis."""
    windows = [x[i, ..., int(s) : int(s) + segment_size] for i, s in enumerate(starts)]
    return torch.stack(windows)


def rand_slice_segments(
    x: torch.Tensor, lengths: torch.Tensor, segment_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random window of ``segment_size`` frames inside each item's valid length."""
    max_start = (lengths - segment_size + 1).clamp(min=1)
    starts = (torch.rand(x.size(0), device=x.device) * max_start).to(torch.long)
    return slice_segments(x, starts, segment_size), starts


def gated_activation(x: torch.Tensor, hidden_channels: int) -> torch.Tensor:
    """WaveNet gate: tanh(first half) * sigmoid(second half)."""
    return torch.tanh(x[:, :hidden_channels]) * torch.sigmoid(x[:, hidden_channels:])
