"""The RVC synthesizer: VITS-style prior/posterior/flow with a speaker embedding and a
(NSF-)HiFi-GAN decoder.

One class covers RVC's four published variants:

=============================  ==========  ==========
RVC class                      phone_dim   use_f0
=============================  ==========  ==========
SynthesizerTrnMs256NSFsid      256 (v1)    True
SynthesizerTrnMs768NSFsid      768 (v2)    True
SynthesizerTrnMs256NSFsid_nono 256 (v1)    False
SynthesizerTrnMs768NSFsid_nono 768 (v2)    False
=============================  ==========  ==========

Sub-module names (``enc_p``, ``dec``, ``flow``, ``enc_q``, ``emb_g``) and the ``weight_g`` /
``weight_v`` weight-norm names make ``state_dict()`` identical in keys and shapes to public RVC
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agents.voice.configs import PHONE_DIMS, SynthesizerConfig, Version
from agents.voice.modules.commons import rand_slice_segments, slice_segments
from agents.voice.modules.encoders import PosteriorEncoder, PriorEncoder
from agents.voice.modules.flows import ResidualCouplingBlock
from agents.voice.modules.generators import HiFiGANGenerator, NSFGenerator
from agents.voice.modules.weight_norm import use_public_weight_norm_keys

# Prior sampling temperature RVC uses at inference.
PRIOR_NOISE_SCALE = 0.66666


@dataclass
class SynthesizerOutput:
    """What one training forward pass yields (RVC returns the same values as a tuple)."""

    audio: torch.Tensor  # [b, 1, segment_frames * hop] decoded slice
    ids_slice: torch.Tensor  # [b] start frame of each slice
    x_mask: torch.Tensor  # [b, 1, t] content-frame mask
    z_mask: torch.Tensor  # [b, 1, t] spectrogram-frame mask
    z: torch.Tensor
    z_p: torch.Tensor
    m_p: torch.Tensor
    logs_p: torch.Tensor
    m_q: torch.Tensor
    logs_q: torch.Tensor


class Synthesizer(nn.Module):
    def __init__(
        self,
        config: SynthesizerConfig,
        phone_dim: int = 768,
        use_f0: bool = True,
        with_posterior: bool = True,
    ) -> None:
        """``with_posterior=False`` builds the inference-only model (no ``enc_q``), as RVC's
        inference checkpoints drop it."""
        super().__init__()
        self.config = config
        self.phone_dim = phone_dim
        self.use_f0 = use_f0
        self.segment_frames = config.segment_frames
        self.enc_p = PriorEncoder(
            phone_dim,
            config.inter_channels,
            config.hidden_channels,
            config.filter_channels,
            config.n_heads,
            config.n_layers,
            config.kernel_size,
            config.p_dropout,
            use_pitch=use_f0,
        )
        decoder_args = (
            config.inter_channels,
            config.resblock,
            config.resblock_kernel_sizes,
            config.resblock_dilation_sizes,
            config.upsample_rates,
            config.upsample_initial_channel,
            config.upsample_kernel_sizes,
            config.gin_channels,
        )
        self.dec: HiFiGANGenerator = (
            NSFGenerator(*decoder_args, sampling_rate=config.sampling_rate)
            if use_f0
            else HiFiGANGenerator(*decoder_args)
        )
        if with_posterior:
            self.enc_q = PosteriorEncoder(
                config.spec_channels,
                config.inter_channels,
                config.hidden_channels,
                kernel_size=5,
                dilation_rate=1,
                n_layers=16,
                gin_channels=config.gin_channels,
            )
        self.flow = ResidualCouplingBlock(
            config.inter_channels,
            config.hidden_channels,
            kernel_size=5,
            dilation_rate=1,
            n_layers=3,
            gin_channels=config.gin_channels,
        )
        self.emb_g = nn.Embedding(config.spk_embed_dim, config.gin_channels)
        use_public_weight_norm_keys(self)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def has_posterior(self) -> bool:
        return hasattr(self, "enc_q")

    def _decode(self, z: torch.Tensor, nsff0: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        if self.use_f0:
            if nsff0 is None:
                raise ValueError("this model is pitch-guided: nsff0 (f0 in Hz) is required")
            assert isinstance(self.dec, NSFGenerator)
            return self.dec(z, nsff0, g=g)
        return self.dec(z, g=g)

    def forward(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        pitchf: torch.Tensor | None,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        sid: torch.Tensor,
    ) -> SynthesizerOutput:
        """Training pass: encode both sides, decode a random ``segment_frames`` latent slice.

        phone [b, t, phone_dim] (content features at the spectrogram frame rate), pitch [b, t]
        coarse bins, pitchf [b, t] Hz, spec [b, spec_channels, t], sid [b].
        """
        if not self.has_posterior:
            raise RuntimeError("this synthesizer was built for inference only (no enc_q)")
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch if self.use_f0 else None, phone_lengths)
        z, m_q, logs_q, z_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, z_mask, g=g)
        z_slice, ids_slice = rand_slice_segments(z, spec_lengths, self.segment_frames)
        f0_slice = (
            slice_segments(pitchf, ids_slice, self.segment_frames)
            if self.use_f0 and pitchf is not None
            else None
        )
        audio = self._decode(z_slice, f0_slice, g)
        return SynthesizerOutput(audio, ids_slice, x_mask, z_mask, z, z_p, m_p, logs_p, m_q, logs_q)

    @torch.no_grad()
    def infer(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        nsff0: torch.Tensor | None,
        sid: torch.Tensor,
        rate: float | None = None,
    ) -> torch.Tensor:
        """Content (+ pitch) → audio [b, 1, t * hop].

        ``rate`` in (0, 1] keeps only the last ``rate`` share of the frames (RVC's real-time
        mode, where the head is context that has been rendered already).
        """
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch if self.use_f0 else None, phone_lengths)
        z_p = (m_p + torch.exp(logs_p) * torch.randn_like(m_p) * PRIOR_NOISE_SCALE) * x_mask
        if rate is not None:
            if not 0.0 < rate <= 1.0:
                raise ValueError("rate must be in (0, 1]")
            head = int(z_p.shape[2] * (1.0 - rate))
            z_p, x_mask = z_p[:, :, head:], x_mask[:, :, head:]
            if nsff0 is not None:
                nsff0 = nsff0[:, head:]
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        return self._decode(z * x_mask, nsff0, g)

    def drop_posterior(self) -> None:
        """Remove ``enc_q`` (only needed for training) to save memory at inference."""
        if self.has_posterior:
            del self.enc_q


def build_synthesizer(
    config: SynthesizerConfig, version: Version, f0: bool, with_posterior: bool = True
) -> Synthesizer:
    """The synthesizer RVC would build for this version and pitch mode."""
    return Synthesizer(config, PHONE_DIMS[version], f0, with_posterior)
