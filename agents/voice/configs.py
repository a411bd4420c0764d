"""RVC model, audio and training configurations (the published v1/v2 × 32k/40k/48k recipes).

The numbers are those of RVC WebUI's ``configs/v1/*.json`` and ``configs/v2/*.json``. RVC has no
``v2/40k.json``: its trainer uses the v1 40k file for v2 too, and so do we, so a v2 40k model has
the same layer shapes as the public ``f0G40k.pth`` (v2) pretrained weights.

An inference checkpoint stores the synthesizer hyper-parameters as a positional list (``config``);
:meth:`SynthesizerConfig.to_public_list` / :meth:`SynthesizerConfig.from_public_list` keep that
exact order so community models load and ours load in RVC WebUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from schemas.vocabulary import SAMPLE_RATE_HZ, SampleRate

Version = Literal["v1", "v2"]
SampleRateName = SampleRate
ModelSize = Literal["full", "tiny"]

SAMPLE_RATES: dict[str, int] = dict(SAMPLE_RATE_HZ)

# Content-feature width per model version (v1: HuBERT layer 9 + projection; v2: layer 12).
PHONE_DIMS: dict[str, int] = {"v1": 256, "v2": 768}

# RVC's exporter always writes 32 in the segment slot of the public list: inference never uses
# it, so we write the same value and ignore it on load.
PUBLIC_SEGMENT_FRAMES = 32


@dataclass(frozen=True)
class SynthesizerConfig:
    """The synthesizer hyper-parameters, in the order of the public checkpoint ``config`` list."""

    spec_channels: int
    segment_frames: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sampling_rate: int

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame: the decoder's total upsampling factor."""
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop

    def to_public_list(self) -> list[Any]:
        return [
            self.spec_channels,
            PUBLIC_SEGMENT_FRAMES,
            self.inter_channels,
            self.hidden_channels,
            self.filter_channels,
            self.n_heads,
            self.n_layers,
            self.kernel_size,
            # RVC writes p_dropout as the int 0; keep ints ints so files compare equal.
            int(self.p_dropout) if float(self.p_dropout).is_integer() else self.p_dropout,
            self.resblock,
            list(self.resblock_kernel_sizes),
            [list(d) for d in self.resblock_dilation_sizes],
            list(self.upsample_rates),
            self.upsample_initial_channel,
            list(self.upsample_kernel_sizes),
            self.spk_embed_dim,
            self.gin_channels,
            self.sampling_rate,
        ]

    @classmethod
    def from_public_list(cls, values: list[Any]) -> SynthesizerConfig:
        if len(values) != 18:
            raise ValueError(f"config list has {len(values)} entries, expected 18")
        (
            spec_channels,
            segment_frames,
            inter_channels,
            hidden_channels,
            filter_channels,
            n_heads,
            n_layers,
            kernel_size,
            p_dropout,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            upsample_rates,
            upsample_initial_channel,
            upsample_kernel_sizes,
            spk_embed_dim,
            gin_channels,
            sampling_rate,
        ) = values
        return cls(
            spec_channels=int(spec_channels),
            segment_frames=int(segment_frames),
            inter_channels=int(inter_channels),
            hidden_channels=int(hidden_channels),
            filter_channels=int(filter_channels),
            n_heads=int(n_heads),
            n_layers=int(n_layers),
            kernel_size=int(kernel_size),
            p_dropout=float(p_dropout),
            resblock=str(resblock),
            resblock_kernel_sizes=tuple(int(k) for k in resblock_kernel_sizes),
            resblock_dilation_sizes=tuple(
                tuple(int(d) for d in dils) for dils in resblock_dilation_sizes
            ),
            upsample_rates=tuple(int(u) for u in upsample_rates),
            upsample_initial_channel=int(upsample_initial_channel),
            upsample_kernel_sizes=tuple(int(k) for k in upsample_kernel_sizes),
            spk_embed_dim=int(spk_embed_dim),
            gin_channels=int(gin_channels),
            sampling_rate=int(sampling_rate),
        )


@dataclass(frozen=True)
class AudioConfig:
    """STFT / mel settings of the training data (``data`` section of RVC's json)."""

    sampling_rate: int
    filter_length: int
    hop_length: int
    win_length: int
    n_mel_channels: int
    mel_fmin: float = 0.0
    mel_fmax: float | None = None


@dataclass(frozen=True)
class TrainHyperParams:
    """Optimiser and loss weights (``train`` section of RVC's json)."""

    segment_size: int  # audio samples the decoder renders per training example
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = 1e-9
    lr_decay: float = 0.999875
    c_mel: float = 45.0
    c_kl: float = 1.0


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-period discriminator: one scale discriminator plus one per period.

    ``channel_divisor`` > 1 shrinks every layer (tests and benchmarks only; the public pretrained
    discriminators have divisor 1).
    """

    periods: tuple[int, ...]
    channel_divisor: int = 1


@dataclass(frozen=True)
class RVCConfig:
    version: Version
    sample_rate: SampleRateName
    synthesizer: SynthesizerConfig
    audio: AudioConfig
    train: TrainHyperParams
    discriminator: DiscriminatorConfig = field(
        default_factory=lambda: DiscriminatorConfig(periods=(2, 3, 5, 7, 11, 17, 23, 37))
    )

    @property
    def phone_dim(self) -> int:
        return PHONE_DIMS[self.version]


# RVC's train.py picks MultiPeriodDiscriminator (v1) or MultiPeriodDiscriminatorV2 (v2); these are
# their periods, and the public f0D*.pth files have exactly these sub-discriminators.
DISCRIMINATOR_PERIODS: dict[str, tuple[int, ...]] = {
    "v1": (2, 3, 5, 7, 11, 17),
    "v2": (2, 3, 5, 7, 11, 17, 23, 37),
}

_RESBLOCK_KERNELS = (3, 7, 11)
_RESBLOCK_DILATIONS = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

# (config file, sampling rate) -> (n_fft, hop, n_mels, segment_size, upsample rates, kernels)
_PUBLIC_TABLE: dict[
    tuple[str, str], tuple[int, int, int, int, tuple[int, ...], tuple[int, ...]]
] = {
    ("v1", "32k"): (1024, 320, 80, 12800, (10, 4, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v1", "40k"): (2048, 400, 125, 12800, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v1", "48k"): (2048, 480, 128, 11520, (10, 6, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v2", "32k"): (1024, 320, 80, 12800, (10, 8, 2, 2), (20, 16, 4, 4)),
    ("v2", "48k"): (2048, 480, 128, 17280, (12, 10, 2, 2), (24, 20, 4, 4)),
}


def _config_file_for(version: Version, sample_rate: SampleRateName) -> tuple[str, str]:
    # RVC: ``"v1/%s.json" % sr if (version == "v1" or sr == "40k") else "v2/%s.json" % sr``
    if version == "v1" or sample_rate == "40k":
        return ("v1", sample_rate)
    return ("v2", sample_rate)


def get_config(
    version: Version, sample_rate: SampleRateName, size: ModelSize = "full"
) -> RVCConfig:
    """The published RVC configuration for ``version`` × ``sample_rate`` (or its tiny variant)."""
    if version not in PHONE_DIMS:
        raise ValueError(f"unknown RVC version {version!r}")
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(
            f"unknown sample rate {sample_rate!r}; expected one of {list(SAMPLE_RATES)}"
        )
    n_fft, hop, n_mels, segment_size, rates, kernels = _PUBLIC_TABLE[
        _config_file_for(version, sample_rate)
    ]
    sr = SAMPLE_RATES[sample_rate]
    synthesizer = SynthesizerConfig(
        spec_channels=n_fft // 2 + 1,
        segment_frames=segment_size // hop,
        inter_channels=192,
        hidden_channels=192,
        filter_channels=768,
        n_heads=2,
        n_layers=6,
        kernel_size=3,
        p_dropout=0.0,
        resblock="1",
        resblock_kernel_sizes=_RESBLOCK_KERNELS,
        resblock_dilation_sizes=_RESBLOCK_DILATIONS,
        upsample_rates=rates,
        upsample_initial_channel=512,
        upsample_kernel_sizes=kernels,
        spk_embed_dim=109,
        gin_channels=256,
        sampling_rate=sr,
    )
    config = RVCConfig(
        version=version,
        sample_rate=sample_rate,
        synthesizer=synthesizer,
        audio=AudioConfig(
            sampling_rate=sr,
            filter_length=n_fft,
            hop_length=hop,
            win_length=n_fft,
            n_mel_channels=n_mels,
        ),
        train=TrainHyperParams(segment_size=segment_size),
        discriminator=DiscriminatorConfig(periods=DISCRIMINATOR_PERIODS[version]),
    )
    return tiny_variant(config) if size == "tiny" else config


def tiny_variant(config: RVCConfig) -> RVCConfig:
    """A very small model with the same audio framing (for tests and benchmarks on CPU).

    Sampling rate, hop and upsampling factors stay, so the same exp_dir data trains it; only
    widths, depths and the training segment shrink.
    """
    synthesizer = replace(
        config.synthesizer,
        segment_frames=8,
        inter_channels=16,
        hidden_channels=16,
        filter_channels=32,
        n_heads=2,
        n_layers=1,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3, 5),),
        upsample_initial_channel=32,
        spk_embed_dim=4,
        gin_channels=8,
    )
    return replace(
        config,
        synthesizer=synthesizer,
        train=replace(config.train, segment_size=8 * config.audio.hop_length),
        discriminator=replace(config.discriminator, channel_divisor=16),
    )
