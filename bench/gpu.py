"""GPU figures in one run: conversion RTF (fp32, fp16, batched pieces), training steps/s (AMP),
separation RTF and peak GPU memory of each, as one JSON object, in well under 5 minutes.

    bash bench/gpu.sh            # on a machine with a CUDA GPU
    bash bench/gpu.sh --dry      # the same code paths on the CPU with tiny sizes (seconds)

Sizes on a GPU: the full v2 48k synthesizer and HuBERT-base (random weights), 60 s of generated
sung vocals cut into ~10 s pieces synthesized 4 at a time, FCPE pitch on the same device; the v2
48k trainer at batch 8 (AMP: bf16 where the GPU has it, else fp16); Spleeter on a 60 s generated
song. ``--dry`` runs the tiny models on 2 s of audio on the CPU: it checks that every stage runs on
the device it is given, not how fast. ``rtf`` is processing time over audio time (below 1: faster
than real time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEM_SR = 44100


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measured(device: torch.device, work: Callable[[], Any]) -> tuple[float, float | None, Any]:
    """(seconds, peak GPU MiB or None on the CPU, result) of ``work``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    started = time.perf_counter()
    result = work()
    _sync(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return elapsed, (round(peak, 1) if peak is not None else None), result


def _voice_model(device: torch.device, size: str, dtype: torch.dtype, runtime: str) -> Any:
    from agents.voice.checkpoint import VoiceModel
    from agents.voice.configs import get_config
    from agents.voice.inference import prepare_for_inference
    from agents.voice.synthesizer import build_synthesizer

    config = get_config("v2", "48k", size)  # type: ignore[arg-type]
    torch.manual_seed(0)
    synth = build_synthesizer(config.synthesizer, "v2", True, with_posterior=False)
    synth = synth.eval().to(device=device, dtype=dtype)
    model = VoiceModel(synth, config.synthesizer.sampling_rate, True, "v2", 1)
    return prepare_for_inference(model, runtime)  # type: ignore[arg-type]


def _encoder(device: torch.device, dry: bool) -> Any:
    from agents.voice.content import ContentEncoder, EncoderConfig

    if not dry:
        from bench.convert import hubert_base_encoder

        return hubert_base_encoder(str(device))
    config = EncoderConfig(
        extractor_mode="group_norm",
        conv_layers=((32, 10, 5), *((32, 3, 2),) * 4, *((32, 2, 2),) * 2),
        conv_bias=False,
        embed_dim=768,
        pos_conv_kernel=16,
        pos_conv_groups=16,
        num_layers=1,
        num_heads=12,
        ff_dim=64,
        layer_norm_first=False,
        final_dim=256,
    )
    return ContentEncoder(config).eval().to(device)


def bench_conversion(device: torch.device, dry: bool, seconds: float) -> list[dict[str, Any]]:
    from agents.converter.pipeline import Windows, convert_audio16k, cut_points
    from agents.voice.f0 import get_f0_extractor
    from frontends.demo_audio import sung_vocal
    from schemas.events import ConversionOptions

    audio, _ = sung_vocal(seconds, 16000, seed=3)
    audio = np.asarray(audio, dtype=np.float32)
    encoder = _encoder(device, dry)
    extractor = get_f0_extractor("fcpe", device=str(device))
    # ~10 s pieces on a GPU; in the dry run pieces of under a second, so batches form there too.
    windows = (
        Windows(pad_s=0.25, query_s=0.1, center_s=0.6, max_s=0.8)
        if dry
        else Windows(pad_s=0.5, query_s=1.0, center_s=10.0, max_s=11.0)
    )
    size = "tiny" if dry else "full"
    # The dry run takes the torch decoder, as a GPU does ('auto' picks ONNX Runtime on the CPU).
    runtime = "torch" if dry else "auto"
    cases = {"fp32": (1, 4), "fp16": (1, 4)} if not dry else {"fp32": (1,), "fp16": (4,)}
    results = []
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        model = _voice_model(device, size, dtype, runtime)
        for batch in cases[precision]:

            def work(model: Any = model, batch: int = batch) -> np.ndarray:
                return convert_audio16k(
                    audio, model, encoder, None, ConversionOptions(f0_method="fcpe"),
                    extractor, windows=windows, batch_pieces=batch,
                )  # fmt: skip

            if not dry:
                work()  # warm-up: kernels, allocator
            elapsed, peak, out = _measured(device, work)
            results.append(
                {
                    "precision": precision,
                    "batch_pieces": batch,
                    "audio_s": seconds,
                    "rtf": round(elapsed / seconds, 4),
                    "peak_gpu_mb": peak,
                    "runtime": model.fast.runtime,
                    "finite": bool(np.all(np.isfinite(out))),
                    "samples": len(out),
                    "pieces": len(cut_points(audio, windows)) + 1,
                }
            )
        del model
    return results


def bench_training(device: torch.device, dry: bool, steps: int) -> dict[str, Any]:
    from agents.trainer.train import TrainConfig, build_trainer
    from agents.voice.configs import get_config
    from bench.train import random_batch

    size, rate = ("tiny", "40k") if dry else ("full", "48k")
    config = get_config("v2", rate, size)  # type: ignore[arg-type]
    torch.manual_seed(0)
    trainer = build_trainer(
        config, TrainConfig(version="v2", sample_rate=rate, model_size=size), device
    )
    batch_size, frames = (1, 40) if dry else (8, 370)
    batch = random_batch(size, batch_size, frames, sample_rate=rate).to(device)
    if not dry:
        trainer.step(batch)
    elapsed, peak, losses = _measured(device, lambda: [trainer.step(batch) for _ in range(steps)])
    return {
        "model": f"v2-{rate}-{size}",
        "batch_size": batch_size,
        "frames": frames,
        "amp": trainer.use_amp,
        "precision": trainer.precision.name,  # auto: bf16 on a GPU that has it, else fp16
        "steps": steps,
        "steps_per_s": round(steps / elapsed, 4),
        "peak_gpu_mb": peak,
        "loss_mel_last": round(float(losses[-1]["loss_mel"]), 3),
    }


def bench_separation(device: torch.device, seconds: float) -> dict[str, Any]:
    from agents.separator.backends.spleeter import SpleeterBackend
    from frontends.demo_audio import sung_vocal

    vocal, _ = sung_vocal(seconds, STEM_SR, seed=5)
    song = np.stack([vocal, vocal], axis=1).astype(np.float32)
    backend = SpleeterBackend(device=str(device))
    backend.separate(song[:STEM_SR])
    elapsed, peak, stems = _measured(device, lambda: backend.separate(song))
    return {
        "model": "spleeter",
        "audio_s": seconds,
        "rtf": round(elapsed / seconds, 4),
        "peak_gpu_mb": peak,
        "stems": sorted(stems),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry)")
    args = parser.parse_args()
    from foundation.logging import configure_logging

    configure_logging("WARNING")  # logs to stderr: stdout is the JSON report
    device = torch.device(args.device or ("cpu" if args.dry else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry for the CPU check")
    started = time.perf_counter()
    seconds = 2.0 if args.dry else 60.0
    report = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "dry": args.dry,
        "conversion": bench_conversion(device, args.dry, seconds),
        "training": bench_training(device, args.dry, 1 if args.dry else 20),
        "separation": bench_separation(device, seconds),
    }
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
