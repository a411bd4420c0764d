"""Transformer encoder with windowed relative-position self-attention (VITS / RVC ``enc_p``)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a [batch, channels, time] tensor (keys gamma/beta)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


QUERY_BLOCK = 512
"""Queries attended at a time at inference (memory: QUERY_BLOCK x length per intermediate)."""


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with learned relative-position embeddings for keys and values.

    Positions further apart than ``window_size`` get no relative term (as in VITS). The embedding
    tables are shared across heads: shape [1, 2 * window + 1, head_channels].
    """

    def __init__(
        self, channels: int, n_heads: int, window_size: int = 10, p_dropout: float = 0.0
    ) -> None:
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError("channels must be divisible by n_heads")
        self.n_heads = n_heads
        self.head_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(p_dropout)
        std = self.head_channels**-0.5
        table = (1, 2 * window_size + 1, self.head_channels)
        self.emb_rel_k = nn.Parameter(torch.randn(table) * std)
        self.emb_rel_v = nn.Parameter(torch.randn(table) * std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def _relative_index(
        self, length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For query i and window slot r: key index i + r - window, and whether it exists."""
        offsets = torch.arange(-self.window_size, self.window_size + 1, device=device)
        keys = torch.arange(length, device=device).unsqueeze(1) + offsets.unsqueeze(0)
        valid = (keys >= 0) & (keys < length)
        return keys.clamp(0, length - 1), valid

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor,
        key_index: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of the queries ``query`` ([b, h, q, d]) over every key; ``attn_mask``,
        ``key_index`` and ``valid`` hold those queries' rows."""
        batch, heads, rows, _ = query.shape
        scores = torch.matmul(query, key.transpose(-2, -1))  # [b, h, q, t]
        # Relative logits only for the 2w+1 offsets that have embeddings, then put them at their
        # absolute key positions (positions outside the window add nothing).
        rel_logits = torch.matmul(query, self.emb_rel_k.transpose(-2, -1))  # [b, h, q, 2w+1]
        rel_logits = rel_logits * valid.to(rel_logits.dtype)
        index = key_index.expand(batch, heads, rows, -1)
        local = torch.zeros_like(scores).scatter_add_(-1, index, rel_logits)
        scores = scores + local
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        weights = self.drop(F.softmax(scores, dim=-1))

        output = torch.matmul(weights, value)  # [b, h, q, d]
        rel_weights = torch.gather(weights, -1, index) * valid.to(weights.dtype)
        return output + torch.matmul(rel_weights, self.emb_rel_v)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        heads, head_ch = self.n_heads, self.head_channels

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # [b, c, t] -> [b, h, t, d]
            return t.view(batch, heads, head_ch, length).transpose(2, 3)

        query = split_heads(self.conv_q(x)) / math.sqrt(head_ch)
        key = split_heads(self.conv_k(x))
        value = split_heads(self.conv_v(x))

        key_index, valid = self._relative_index(length, x.device)  # [t, 2w+1]
        if torch.is_grad_enabled() or length <= QUERY_BLOCK:
            output = self._attend(query, key, value, attn_mask, key_index, valid)
        else:
            # Inference on a long piece: a block of queries at a time. Every row's softmax is its
            # own, so the result is the same, while the [t, t] intermediates (six of them, ~1 GB
            # for a 45 s piece) shrink to [QUERY_BLOCK, t].
            output = torch.cat(
                [
                    self._attend(
                        query[:, :, first : first + QUERY_BLOCK],
                        key,
                        value,
                        attn_mask[:, :, first : first + QUERY_BLOCK],
                        key_index[first : first + QUERY_BLOCK],
                        valid[first : first + QUERY_BLOCK],
                    )
                    for first in range(0, length, QUERY_BLOCK)
                ],
                dim=2,
            )
        output = output.transpose(2, 3).contiguous().view(batch, channels, length)
        return self.conv_o(output)


class FeedForward(nn.Module):
    """Two 'same'-padded convolutions with ReLU, masked at the sequence ends."""

    def __init__(
        self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            return x
        return F.pad(x, ((self.kernel_size - 1) // 2, self.kernel_size // 2))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(self._pad(x * x_mask)))
        x = self.drop(x)
        x = self.conv_2(self._pad(x * x_mask))
        return x * x_mask


class AttentionEncoder(nn.Module):
    """Post-norm transformer encoder; attribute names match RVC's ``attentions.Encoder``."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float = 0.0,
        window_size: int = 10,
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            RelativeSelfAttention(hidden_channels, n_heads, window_size, p_dropout)
            for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(
            ChannelLayerNorm(hidden_channels) for _ in range(n_layers)
        )
        self.ffn_layers = nn.ModuleList(
            FeedForward(hidden_channels, filter_channels, kernel_size, p_dropout)
            for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(
            ChannelLayerNorm(hidden_channels) for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm_1(x + self.drop(attn(x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
