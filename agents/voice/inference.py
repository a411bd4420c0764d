"""Fast synthesizer inference: the same numbers as :meth:`Synthesizer.infer`, for less work.

:meth:`Synthesizer.infer` stays the plain reference path. :func:`prepare_for_inference` readies a
loaded voice model for the fast path:

* weight norm is folded into plain weights once, instead of being recomputed on every call;
* the decoder (90 % of the work) runs window by window: each window of ``tile_frames`` latent
  frames is decoded with :meth:`HiFiGANGenerator.context_frames` frames of context on both sides
  and cropped, which gives it exactly the samples a whole-sequence decode gives it (up to float
  rounding). Tensors stay a few MB instead of hundreds, so the allocator reuses memory instead of
  mapping fresh pages from the kernel for every layer (on CPU, that page faulting was a third of
  the conversion's CPU time), the working set stays in cache, and memory no longer grows with a
  piece's length;
* only the frames the caller keeps are decoded (a piece's context margins are thrown away);
* on the CPU, the decoder window runs through ONNX Runtime when it is installed (a faster
  convolution kernel on AVX2 than torch's), with the torch decoder as the fallback.

The NSF excitation (sine + noise) and the prior noise are drawn for the whole piece before any
window is decoded, in the order the plain path draws them, so a seed gives the same output on
both paths.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.utils import parametrize

from agents.voice.modules.generators import HiFiGANGenerator, NSFGenerator
from agents.voice.synthesizer import PRIOR_NOISE_SCALE, Synthesizer
from foundation.logging import get_logger

log = get_logger(__name__)

Runtime = Literal["auto", "torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx")
DEFAULT_TILE_FRAMES = 256
"""Latent frames per decoder window: at 48 kHz the largest tensor of a window is then about
16 MB, below glibc's largest mmap threshold, and the context overhead is below 10 %."""
CONTEXT_SAFETY_FRAMES = 2
ORT_SPINNING_KEY = "session.intra_op.allow_spinning"


class DecoderWindow(Protocol):
    name: str

    def __call__(
        self, z: torch.Tensor, source: torch.Tensor | None, g: torch.Tensor
    ) -> torch.Tensor: ...


def fold_weight_norm(module: nn.Module) -> int:
    """Replace every weight-normalised weight by its current value (in place); returns how many.

    For inference copies only: the folded module's ``state_dict`` has ``weight`` keys instead of
    RVC's ``weight_g``/``weight_v``.
    """
    folded = 0
    for child in module.modules():
        if parametrize.is_parametrized(child, "weight"):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
            folded += 1
    return folded


class TorchWindow:
    name = "torch"

    def __init__(self, decoder: HiFiGANGenerator) -> None:
        self.decoder = decoder

    def __call__(
        self, z: torch.Tensor, source: torch.Tensor | None, g: torch.Tensor
    ) -> torch.Tensor:
        return self.decoder.render(z, source, g)


class _Render(nn.Module):
    """``decoder.render`` as a module with tensor-only inputs, for the ONNX export."""

    def __init__(self, decoder: HiFiGANGenerator, with_source: bool) -> None:
        super().__init__()
        self.decoder = decoder
        self.with_source = with_source

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.with_source:
            z, source, g = inputs
            return self.decoder.render(z, source, g)
        z, g = inputs
        return self.decoder.render(z, None, g)


class OnnxWindow:
    """The decoder exported once to ONNX (batch and time dynamic) and run by ONNX Runtime."""

    name = "onnx"

    def __init__(self, decoder: HiFiGANGenerator, threads: int) -> None:
        import onnxruntime as ort

        self.with_source = isinstance(decoder, NSFGenerator)
        channels = decoder.conv_pre.in_channels
        gin = decoder.cond.in_channels if hasattr(decoder, "cond") else 1
        frames = 8
        z = torch.zeros(1, channels, frames)
        g = torch.zeros(1, gin, 1)
        names = ["z", "source", "g"] if self.with_source else ["z", "g"]
        example = (z, torch.zeros(1, 1, frames * decoder.upp), g) if self.with_source else (z, g)
        axes = {"z": {0: "batch", 2: "frames"}, "audio": {0: "batch", 2: "samples"}}
        if self.with_source:
            axes["source"] = {0: "batch", 2: "samples"}
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(
                _Render(decoder, self.with_source).eval(),
                example,
                buffer,
                input_names=names,
                output_names=["audio"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning between runs. Measured on 2 cores, a
        # 48 kHz decoder window with torch work between windows: 45.8 vs 47.0 CPU-s (1 %
        # faster in wall time) on a quiet machine, 45-51 vs 57-59 CPU-s beside other load,
        # where the spinning threads take cores the rest of the conversion (and other
        # workers) need.
        options.add_session_config_entry(ORT_SPINNING_KEY, "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(
        self, z: torch.Tensor, source: torch.Tensor | None, g: torch.Tensor
    ) -> torch.Tensor:
        feed = {"z": z.float().contiguous().numpy(), "g": g.float().contiguous().numpy()}
        if self.with_source:
            assert source is not None
            feed["source"] = source.float().contiguous().numpy()
        (audio,) = self.session.run(["audio"], feed)
        return torch.from_numpy(audio)


def _onnx_usable(decoder: HiFiGANGenerator) -> bool:
    parameter = next(decoder.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def decoder_window(decoder: HiFiGANGenerator, runtime: Runtime = "auto") -> DecoderWindow:
    """The decoder-window runner for ``runtime``: ``'onnx'`` (CPU, fp32, needs onnxruntime),
    ``'torch'``, or ``'auto'`` (ONNX Runtime where usable, else torch)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch" or (runtime == "auto" and not _onnx_usable(decoder)):
        return TorchWindow(decoder)
    if runtime == "onnx" and not _onnx_usable(decoder):
        raise ValueError("the onnx runtime needs onnxruntime and a CPU float32 model")
    try:
        return OnnxWindow(decoder, torch.get_num_threads())
    except Exception as exc:  # an export or session failure: the torch decoder still works
        if runtime == "onnx":
            raise
        log.warning("onnx decoder unavailable, using torch", error=f"{type(exc).__name__}: {exc}")
        return TorchWindow(decoder)


@dataclass
class FastSynthesizer:
    """A synthesizer readied for :func:`infer_window` (weight norm folded, decoder runner)."""

    synthesizer: Synthesizer
    window: DecoderWindow
    tile_frames: int = DEFAULT_TILE_FRAMES

    @property
    def context_frames(self) -> int:
        return self.synthesizer.dec.context_frames() + CONTEXT_SAFETY_FRAMES

    @property
    def runtime(self) -> str:
        return self.window.name


def prepare_for_inference(
    voice_model: Any, runtime: Runtime = "auto", tile_frames: int = DEFAULT_TILE_FRAMES
) -> Any:
    """Ready ``voice_model`` (a loaded :class:`~agents.voice.checkpoint.VoiceModel`) for the fast
    path, in place: sets ``voice_model.fast``. Returns the model."""
    if tile_frames < 1:
        raise ValueError("tile_frames must be positive")
    synthesizer = voice_model.synthesizer
    folded = fold_weight_norm(synthesizer)
    window = decoder_window(synthesizer.dec, runtime)
    voice_model.fast = FastSynthesizer(synthesizer, window, tile_frames)
    log.info(
        "synthesizer ready",
        runtime=window.name,
        tile_frames=tile_frames,
        context_frames=voice_model.fast.context_frames,
        weight_norm_folded=folded,
    )
    return voice_model


def decode_window(
    fast: FastSynthesizer,
    z: torch.Tensor,
    nsff0: torch.Tensor | None,
    g: torch.Tensor,
    start: int,
    stop: int,
) -> torch.Tensor:
    """Decoder output ``[b, 1, (stop - start) * hop]`` for latent frames ``start..stop`` of ``z``
    (``[b, channels, frames]``), decoded ``tile_frames`` at a time."""
    decoder = fast.synthesizer.dec
    frames, upp = z.shape[2], decoder.upp
    if not 0 <= start < stop <= frames:
        raise ValueError(f"window {start}..{stop} outside 0..{frames}")
    # The excitation is drawn for the whole piece, as the plain decoder draws it.
    source = decoder.m_source(nsff0, upp) if isinstance(decoder, NSFGenerator) else None
    context = fast.context_frames
    pieces = []
    for first in range(start, stop, fast.tile_frames):
        last = min(first + fast.tile_frames, stop)
        low, high = max(0, first - context), min(frames, last + context)
        window_source = source[:, :, low * upp : high * upp] if source is not None else None
        audio = fast.window(z[:, :, low:high], window_source, g)
        pieces.append(audio[:, :, (first - low) * upp : (last - low) * upp].to(z.device))
    return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]


def infer_window(
    fast: FastSynthesizer,
    phone: torch.Tensor,
    phone_lengths: torch.Tensor,
    pitch: torch.Tensor | None,
    nsff0: torch.Tensor | None,
    sid: torch.Tensor,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """:meth:`Synthesizer.infer`'s audio for frames ``start..stop`` only: ``[b, 1, n * hop]``."""
    synthesizer = fast.synthesizer
    with torch.inference_mode():
        g = synthesizer.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = synthesizer.enc_p(
            phone, pitch if synthesizer.use_f0 else None, phone_lengths
        )
        z_p = (m_p + torch.exp(logs_p) * torch.randn_like(m_p) * PRIOR_NOISE_SCALE) * x_mask
        z = synthesizer.flow(z_p, x_mask, g=g, reverse=True) * x_mask
        if synthesizer.use_f0 and nsff0 is None:
            raise ValueError("this model is pitch-guided: nsff0 (f0 in Hz) is required")
        stop = z.shape[2] if stop is None else min(stop, z.shape[2])
        return decode_window(fast, z, nsff0 if synthesizer.use_f0 else None, g, start, stop)
