"""HiFi-GAN decoder (``dec``) and its NSF variant driven by a sine excitation at the pitch.

Attribute names (``conv_pre``, ``ups``, ``resblocks``, ``noise_convs``, ``m_source.l_linear``,
``conv_post``, ``cond``) are those of RVC's ``Generator`` / ``GeneratorNSF`` so public weights load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from agents.voice.modules.commons import get_padding
from agents.voice.modules.weight_norm import normal_init_, weight_norm

LRELU_SLOPE = 0.1


def _wn_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    conv = nn.Conv1d(
        channels,
        channels,
        kernel_size,
        1,
        dilation=dilation,
        padding=get_padding(kernel_size, dilation),
    )
    normal_init_(conv)
    return weight_norm(conv)


def _conv_context(conv: nn.Conv1d) -> int:
    return int(conv.dilation[0]) * (int(conv.kernel_size[0]) - 1) // 2


class ResBlock1(nn.Module):
    """Three residual units, each a dilated conv then a plain conv (HiFi-GAN V1)."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_wn_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_wn_conv(channels, kernel_size, 1) for _ in dilations)

    def context(self) -> int:
        """Samples on each side of an output sample that reach it through this block."""
        return sum(_conv_context(conv) for conv in (*self.convs1, *self.convs2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE))
            x = x + xt
        return x


class ResBlock2(nn.Module):
    """Residual units of one dilated conv each (HiFi-GAN V3)."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_wn_conv(channels, kernel_size, d) for d in dilations)

    def context(self) -> int:
        return sum(_conv_context(conv) for conv in self.convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


def _resblock(kind: str) -> type[ResBlock1] | type[ResBlock2]:
    if kind == "1":
        return ResBlock1
    if kind == "2":
        return ResBlock2
    raise ValueError(f"unknown resblock type {kind!r}")


class HiFiGANGenerator(nn.Module):
    """Latent frames → waveform by transposed-conv upsampling and multi-receptive-field fusion."""

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upp = math.prod(upsample_rates)
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        block = _resblock(resblock)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            channels = upsample_initial_channel // (2 ** (i + 1))
            up = nn.ConvTranspose1d(
                upsample_initial_channel // (2**i),
                channels,
                kernel,
                rate,
                padding=(kernel - rate) // 2,
            )
            normal_init_(up)
            self.ups.append(weight_norm(up))
            for k, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(channels, k, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, 1, padding=3, bias=False)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def _fuse(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """Average of this stage's residual blocks (multi-receptive-field fusion)."""
        blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
        total = blocks[0](x)
        for block in blocks[1:]:
            total = total + block(x)
        return total / self.num_kernels

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        # HiFi-GAN uses the default 0.01 slope before the last conv.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))

    def context_frames(self) -> int:
        """Latent frames on each side of a frame that can change its output samples.

        The decoder is a stack of 'same'-padded convolutions, so an output sample depends only
        on this many neighbouring frames: decoding a window with this much context on both
        sides gives the window exactly what decoding the whole sequence gives it.
        """
        reach = _conv_context(self.conv_post)  # samples at the output rate
        for stage in reversed(range(self.num_upsamples)):
            blocks = self.resblocks[stage * self.num_kernels : (stage + 1) * self.num_kernels]
            reach += max(block.context() for block in blocks)
            up = self.ups[stage]
            rate, kernel = int(up.stride[0]), int(up.kernel_size[0])
            # Into the previous stage's rate; the kernel's span (and the noise conv's, which is
            # shorter) adds its own reach.
            reach = -(-reach // rate) + -(-kernel // rate)
        return reach + _conv_context(self.conv_pre)

    def render(
        self, x: torch.Tensor, source: torch.Tensor | None, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent frames (+ the NSF source at the audio rate, if any) to audio."""
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for stage, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if source is not None:
                x = x + self.noise_convs[stage](source)
            x = self._fuse(stage, x)
        return self._output(x)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        return self.render(x, None, g)


class SineSource(nn.Module):
    """NSF harmonic source: a sine at f0 (noise where unvoiced), merged by a linear layer + tanh.

    RVC uses only the fundamental (``harmonic_num = 0``), so ``l_linear`` is Linear(1, 1).
    """

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.harmonics = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(self.harmonics, 1)

    @torch.no_grad()
    def excitation(self, f0: torch.Tensor, upp: int) -> torch.Tensor:
        """[b, frames] f0 in Hz → [b, frames * upp, harmonics] excitation at the audio rate."""
        batch, frames = f0.shape
        multiples = torch.arange(1, self.harmonics + 1, device=f0.device, dtype=torch.float64)
        # Cycles advanced per sample, held constant within a frame.
        step = (f0.double().unsqueeze(-1) * multiples / self.sampling_rate) % 1.0  # [b, n, h]
        # Phase at each frame start, accumulated in float64 and wrapped, so long inputs do not
        # lose precision; a random start phase for the overtones (the fundamental starts at 0).
        # Drawn in float32 as RVC does: a float64 draw consumes the generator differently, and
        # every noise sample after it would differ from RVC's for the same seed.
        start = torch.rand(batch, 1, self.harmonics, device=f0.device).double()
        start[..., 0] = 0.0
        frame_phase = (torch.cumsum(step * upp, dim=1) - step * upp + start) % 1.0
        within = torch.arange(1, upp + 1, device=f0.device, dtype=torch.float64)
        phase = frame_phase.unsqueeze(2) + step.unsqueeze(2) * within.view(1, 1, upp, 1)
        phase = phase.reshape(batch, frames * upp, self.harmonics)
        sine = torch.sin(2 * math.pi * phase).to(torch.float32) * self.sine_amp
        voiced = (f0 > self.voiced_threshold).to(torch.float32)
        voiced = voiced.repeat_interleave(upp, dim=1).unsqueeze(-1)
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        noise = noise_amp * torch.randn_like(sine)
        return sine * voiced + noise

    def forward(self, f0: torch.Tensor, upp: int) -> torch.Tensor:
        """[b, frames] f0 → [b, 1, frames * upp] merged source signal."""
        excitation = self.excitation(f0, upp).to(self.l_linear.weight.dtype)
        return torch.tanh(self.l_linear(excitation)).transpose(1, 2)


class NSFGenerator(HiFiGANGenerator):
    """HiFi-GAN whose every stage also gets the sine source, downsampled to that stage's rate."""

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int,
        sampling_rate: int,
    ) -> None:
        super().__init__(
            initial_channel,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            upsample_rates,
            upsample_initial_channel,
            upsample_kernel_sizes,
            gin_channels,
        )
        self.m_source = SineSource(sampling_rate)
        self.noise_convs = nn.ModuleList()
        for i in range(len(upsample_rates)):
            channels = upsample_initial_channel // (2 ** (i + 1))
            if i + 1 < len(upsample_rates):
                stride = math.prod(upsample_rates[i + 1 :])
                conv = nn.Conv1d(1, channels, stride * 2, stride=stride, padding=stride // 2)
            else:
                conv = nn.Conv1d(1, channels, 1)
            self.noise_convs.append(conv)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, f0: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.render(x, self.m_source(f0, self.upp), g)
