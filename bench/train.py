"""Training-step throughput and peak memory of the RVC trainer on CPU, with random data.

    python bench/train.py [--steps 3] [--batch-size 2] [--frames 200] [--threads 2]

Each model size runs in its own process so its peak RSS is its own. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from typing import Any

import psutil
import torch

from agents.trainer.data import Batch
from agents.trainer.train import TrainConfig, build_trainer
from agents.voice.configs import get_config


def random_batch(size: str, batch_size: int, frames: int, sample_rate: str = "40k") -> Batch:
    config = get_config("v2", sample_rate, size)  # type: ignore[arg-type]
    hop = config.audio.hop_length
    gen = torch.Generator().manual_seed(0)
    lengths = torch.full((batch_size,), frames, dtype=torch.long)
    return Batch(
        phone=torch.randn(batch_size, frames, config.phone_dim, generator=gen),
        phone_lengths=lengths,
        pitch=torch.randint(1, 256, (batch_size, frames), generator=gen),
        pitchf=100 + 200 * torch.rand(batch_size, frames, generator=gen),
        spec=torch.rand(batch_size, config.synthesizer.spec_channels, frames, generator=gen),
        spec_lengths=lengths.clone(),
        wave=0.1 * torch.randn(batch_size, 1, frames * hop, generator=gen),
        wave_lengths=torch.full((batch_size,), frames * hop, dtype=torch.long),
        sid=torch.zeros(batch_size, dtype=torch.long),
    )


def bench_one(size: str, steps: int, batch_size: int, frames: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_config("v2", "40k", size)  # type: ignore[arg-type]
    trainer = build_trainer(
        config,
        TrainConfig(version="v2", sample_rate="40k", model_size=size),
        torch.device("cpu"),  # type: ignore[arg-type]
    )
    batch = random_batch(size, batch_size, frames)
    trainer.step(batch)  # warm-up: allocator, kernels
    started = time.perf_counter()
    losses = {}
    for _ in range(steps):
        losses = trainer.step(batch)
    elapsed = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": f"v2-40k-{size}",
        "generator_params_m": round(sum(p.numel() for p in trainer.net_g.parameters()) / 1e6, 2),
        "discriminator_params_m": round(
            sum(p.numel() for p in trainer.net_d.parameters()) / 1e6, 2
        ),
        "batch_size": batch_size,
        "frames": frames,
        "segment_samples": config.train.segment_size,
        "steps": steps,
        "seconds": round(elapsed, 3),
        "steps_per_s": round(steps / elapsed, 4),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rss_mb_end": round(psutil.Process().memory_info().rss / 2**20, 1),
        "loss_mel_last": round(losses["loss_mel"], 3),
    }


def _child(queue: Any, *args: Any) -> None:
    queue.put(bench_one(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"])
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results = []
    for size in args.sizes:
        steps = args.tiny_steps if size == "tiny" else args.steps
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_child, args=(queue, size, steps, args.batch_size, args.frames, args.threads)
        )
        proc.start()
        results.append(queue.get())
        proc.join()
    report = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": psutil.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
