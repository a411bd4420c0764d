"""RMVPE (Wei et al., 2023): a U-Net + BiGRU pitch estimator on a log-mel spectrogram.

The network is rebuilt here in plain torch with module names that match the public ``rmvpe.pt``
state dict (``unet.encoder.layers.0.conv.0.conv.0.weight``, ``fc.0.gru.weight_ih_l0`` ...), so
that file loads with ``torch.load(weights_only=True)``. Its sizes (channels, depth, blocks, GRU
width) are read from the state dict's shapes, so the public model and small test models both load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn

from agents.voice.f0.base import HOP, SAMPLE_RATE, F0Setup, as_audio16k, finish, in_chunks
from foundation.checkpoint import load_checkpoint
from foundation.errors import StageError
from foundation.logging import get_logger

log = get_logger(__name__)

N_MELS = 128
N_FFT = 1024
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
N_CLASSES = 360
CENTS_OFFSET = 1997.3794084376191
"""Bin ``i`` of the 360-bin salience is ``20 * i + CENTS_OFFSET`` cents above 10 Hz."""
VOICING_THRESHOLD = 0.03
_BN_MOMENTUM = 0.01


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


class ResidualConvBlock(nn.Module):
    """Two 3x3 conv/BN/ReLU stages with a residual path (1x1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM),
            nn.ReLU(),
        )
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.conv(x) + residual


class ResidualStack(nn.Module):
    """``n_blocks`` residual blocks; the first one changes the channel count."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            [ResidualConvBlock(in_channels, out_channels)]
            + [ResidualConvBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class DownBlock(ResidualStack):
    """A residual stack followed by 2x2 average pooling; returns (skip, pooled)."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int) -> None:
        super().__init__(in_channels, out_channels, n_blocks)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward_with_skip(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = super().forward(x)
        return skip, self.pool(skip)


class UNetEncoder(nn.Module):
    def __init__(self, n_layers: int, n_blocks: int, base_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=_BN_MOMENTUM)
        channels = [1] + [base_channels * 2**i for i in range(n_layers)]
        self.layers = nn.ModuleList(
            DownBlock(channels[i], channels[i + 1], n_blocks) for i in range(n_layers)
        )
        self.out_channels = base_channels * 2**n_layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        x = self.bn(x)
        for layer in self.layers:
            skip, x = layer.forward_with_skip(x)
            skips.append(skip)
        return x, skips


class UNetBottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_layers: int, n_blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ResidualStack(in_channels if i == 0 else out_channels, out_channels, n_blocks)
            for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class UpBlock(nn.Module):
    """2x transposed-conv upsampling, concatenation with the skip, then a residual stack."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(
                in_channels,
                out_channels,
                3,
                stride=(2, 2),
                padding=(1, 1),
                output_padding=(1, 1),
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList(
            [ResidualConvBlock(out_channels * 2, out_channels)]
            + [ResidualConvBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class UNetDecoder(nn.Module):
    def __init__(self, in_channels: int, n_layers: int, n_blocks: int) -> None:
        super().__init__()
        channels = [in_channels // 2**i for i in range(n_layers + 1)]
        self.layers = nn.ModuleList(
            UpBlock(channels[i], channels[i + 1], n_blocks) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self.layers, reversed(skips), strict=True):
            x = layer(x, skip)
        return x


class DeepUNet(nn.Module):
    def __init__(self, n_layers: int, n_bottleneck: int, n_blocks: int, base_channels: int):
        super().__init__()
        self.encoder = UNetEncoder(n_layers, n_blocks, base_channels)
        top = self.encoder.out_channels
        self.intermediate = UNetBottleneck(top // 2, top, n_bottleneck, n_blocks)
        self.decoder = UNetDecoder(top, n_layers, n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(
            input_size, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


@dataclass(frozen=True)
class RmvpeConfig:
    n_layers: int = 5
    n_bottleneck: int = 4
    n_blocks: int = 4
    base_channels: int = 16
    n_gru: int = 1
    gru_hidden: int = 256

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> RmvpeConfig:
        def count(pattern: str) -> int:
            found = {m.group(1) for k in state if (m := re.match(pattern, k))}
            return len(found)

        try:
            return cls(
                n_layers=count(r"unet\.encoder\.layers\.(\d+)\."),
                n_bottleneck=count(r"unet\.intermediate\.layers\.(\d+)\."),
                n_blocks=count(r"unet\.encoder\.layers\.0\.conv\.(\d+)\."),
                base_channels=int(state["unet.encoder.layers.0.conv.0.conv.0.weight"].shape[0]),
                n_gru=count(r"fc\.0\.gru\.weight_ih_l(\d+)$"),
                gru_hidden=int(state["fc.0.gru.weight_hh_l0"].shape[1]),
            )
        except KeyError as exc:
            raise StageError("invalid_model", f"not an RMVPE state dict (no {exc})") from None


class RmvpeNet(nn.Module):
    """Log-mel (B, 128, T) -> pitch salience (B, T, 360)."""

    def __init__(self, config: RmvpeConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = DeepUNet(
            config.n_layers, config.n_bottleneck, config.n_blocks, config.base_channels
        )
        self.cnn = nn.Conv2d(config.base_channels, 3, 3, padding=1)
        self.fc = nn.Sequential(
            BiGRU(3 * N_MELS, config.gru_hidden, config.n_gru),
            nn.Linear(2 * config.gru_hidden, N_CLASSES),
            nn.Dropout(0.25),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.transpose(-1, -2).unsqueeze(1)  # (B, 1, T, mels)
        x = self.cnn(self.unet(x)).transpose(1, 2).flatten(-2)  # (B, T, 3 * mels)
        return self.fc(x)


# --------------------------------------------------------------------------------------------------
# Front end and decoding
# --------------------------------------------------------------------------------------------------


class LogMel(nn.Module):
    """RMVPE's input: 128-band HTK-mel (30 Hz - 8 kHz, Slaney area norm) of a 1024-point STFT
    with a 160-sample hop, natural log, floored at 1e-5."""

    def __init__(self) -> None:
        super().__init__()
        fbank = AF.melscale_fbanks(
            N_FFT // 2 + 1, MEL_FMIN, MEL_FMAX, N_MELS, SAMPLE_RATE, norm="slaney", mel_scale="htk"
        )
        self.register_buffer("mel_basis", fbank.T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            audio,
            n_fft=N_FFT,
            hop_length=HOP,
            win_length=N_FFT,
            window=self.window,
            center=True,
            return_complex=True,
        )
        mel = torch.matmul(self.mel_basis, spec.abs())
        return torch.log(torch.clamp(mel, min=1e-5))


_CENTS = 20.0 * np.arange(N_CLASSES) + CENTS_OFFSET


def salience_to_f0(salience: np.ndarray, threshold: float = VOICING_THRESHOLD) -> np.ndarray:
    """Decode (T, 360) salience to Hz: the salience-weighted mean of the cents within +-4 bins of
    the peak ("local average"), 0 where the peak is at or below ``threshold``."""
    salience = np.asarray(salience, dtype=np.float64)
    if salience.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    centre = np.argmax(salience, axis=1)
    window = np.clip(centre[:, None] + np.arange(-4, 5)[None, :], -1, N_CLASSES)
    inside = (window >= 0) & (window < N_CLASSES)
    index = np.clip(window, 0, N_CLASSES - 1)
    weights = np.where(inside, np.take_along_axis(salience, index, axis=1), 0.0)
    cents = np.where(inside, _CENTS[index], 0.0)
    total = weights.sum(axis=1)
    mean_cents = (weights * cents).sum(axis=1) / np.where(total > 0, total, 1.0)
    f0 = 10.0 * 2.0 ** (mean_cents / 1200.0)
    voiced = (salience.max(axis=1) > threshold) & (total > 0)
    return np.where(voiced, f0, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Loading and the extractor
# --------------------------------------------------------------------------------------------------


def load_rmvpe_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an ``rmvpe.pt``, loaded without running pickled code."""
    state: Any = load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StageError("invalid_model", f"{path.name} is not an RMVPE state dict")
    return state


class RmvpeExtractor:
    name = "rmvpe"

    def __init__(self, model_path: Path | None, device: str = "cpu") -> None:
        if model_path is None or not Path(model_path).is_file():
            raise StageError(
                "model_not_found",
                f"RMVPE weights not found at {model_path} (set SINGTOME_RMVPE_PATH to rmvpe.pt)",
            )
        self.device = torch.device(device)
        state = load_rmvpe_state(Path(model_path))
        self.net = RmvpeNet(RmvpeConfig.from_state_dict(state))
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise StageError("invalid_model", f"{Path(model_path).name}: {exc}") from None
        self.net.eval().to(self.device)
        self.mel = LogMel().to(self.device)
        log.info("rmvpe_loaded", path=str(model_path), config=str(self.net.config))

    def salience(self, audio16k: np.ndarray) -> np.ndarray:
        """(frames, 360) pitch salience, ``len(audio) // 160 + 1`` frames."""
        x = torch.from_numpy(as_audio16k(audio16k).copy()).to(self.device)
        with torch.inference_mode():
            mel = self.mel(x.unsqueeze(0))
            n_frames = mel.shape[-1]
            # The U-Net halves time n_layers times: pad to a multiple of 2**n_layers.
            multiple = 2**self.net.config.n_layers
            n_pad = -n_frames % multiple
            if n_pad:
                mel = torch.nn.functional.pad(mel, (0, n_pad))
            hidden = self.net(mel)[0, :n_frames]
        return hidden.float().cpu().numpy()

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        x = as_audio16k(audio16k)
        return finish(in_chunks(self._track, x), x.shape[0], p_len)

    def _track(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] < N_FFT // 2 + 1:  # reflect padding needs half a window of audio
            x = np.pad(x, (0, N_FFT // 2 + 1 - x.shape[0]))
        return salience_to_f0(self.salience(x))


def create(setup: F0Setup) -> RmvpeExtractor:
    return RmvpeExtractor(setup.rmvpe_path, device=setup.device)
