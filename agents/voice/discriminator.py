"""HiFi-GAN multi-period discriminator plus the scale discriminator, as RVC trains with.

v1 uses periods (2, 3, 5, 7, 11, 17), v2 (2, 3, 5, 7, 11, 17, 23, 37) (RVC's
``MultiPeriodDiscriminator`` / ``MultiPeriodDiscriminatorV2``); ``discriminators.0`` is always the
scale discriminator. Keys match the public ``f0D*.pth`` files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from agents.voice.configs import DiscriminatorConfig
from agents.voice.modules.commons import get_padding
from agents.voice.modules.weight_norm import use_public_weight_norm_keys, weight_norm

LRELU_SLOPE = 0.1

# (out channels, kernel, stride, groups, padding) of the scale discriminator's conv stack.
_SCALE_LAYERS = (
    (16, 15, 1, 1, 7),
    (64, 41, 4, 4, 20),
    (256, 41, 4, 16, 20),
    (1024, 41, 4, 64, 20),
    (1024, 41, 4, 256, 20),
    (1024, 5, 1, 1, 2),
)
_PERIOD_CHANNELS = (32, 128, 512, 1024, 1024)

Logits = torch.Tensor
FeatureMaps = list[torch.Tensor]


class ScaleDiscriminator(nn.Module):
    def __init__(self, channel_divisor: int = 1) -> None:
        super().__init__()
        convs = []
        in_ch = 1
        for out_ch, kernel, stride, groups, padding in _SCALE_LAYERS:
            out_ch = max(1, out_ch // channel_divisor)
            groups = max(1, groups // channel_divisor)
            convs.append(
                weight_norm(
                    nn.Conv1d(in_ch, out_ch, kernel, stride, groups=groups, padding=padding)
                )
            )
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv1d(in_ch, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        fmap: FeatureMaps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class PeriodDiscriminator(nn.Module):
    """Looks at the waveform folded into rows of ``period`` samples (2-D convs along time)."""

    def __init__(
        self, period: int, kernel_size: int = 5, stride: int = 3, channel_divisor: int = 1
    ) -> None:
        super().__init__()
        self.period = period
        padding = (get_padding(kernel_size, 1), 0)
        convs = []
        in_ch = 1
        for i, out_ch in enumerate(_PERIOD_CHANNELS):
            out_ch = max(1, out_ch // channel_divisor)
            layer_stride = (stride, 1) if i < len(_PERIOD_CHANNELS) - 1 else 1
            convs.append(
                weight_norm(
                    nn.Conv2d(in_ch, out_ch, (kernel_size, 1), layer_stride, padding=padding)
                )
            )
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(in_ch, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[Logits, FeatureMaps]:
        fmap: FeatureMaps = []
        batch, channels, length = x.shape
        if length % self.period:
            pad = self.period - length % self.period
            x = F.pad(x, (0, pad), "reflect")
            length += pad
        x = x.view(batch, channels, length // self.period, self.period)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: Sequence[int], channel_divisor: int = 1) -> None:
        super().__init__()
        discriminators: list[nn.Module] = [ScaleDiscriminator(channel_divisor)]
        discriminators += [PeriodDiscriminator(p, channel_divisor=channel_divisor) for p in periods]
        self.discriminators = nn.ModuleList(discriminators)
        use_public_weight_norm_keys(self)

    @classmethod
    def from_config(cls, config: DiscriminatorConfig) -> MultiPeriodDiscriminator:
        return cls(config.periods, config.channel_divisor)

    def forward(
        self, real: torch.Tensor, generated: torch.Tensor
    ) -> tuple[list[Logits], list[Logits], list[FeatureMaps], list[FeatureMaps]]:
        """Scores and feature maps of every sub-discriminator for real and generated audio."""
        real_logits, fake_logits, real_maps, fake_maps = [], [], [], []
        for disc in self.discriminators:
            logits_r, fmap_r = disc(real)
            logits_g, fmap_g = disc(generated)
            real_logits.append(logits_r)
            fake_logits.append(logits_g)
            real_maps.append(fmap_r)
            fake_maps.append(fmap_g)
        return real_logits, fake_logits, real_maps, fake_maps
