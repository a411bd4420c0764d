"""Training-step throughput and peak memory of the RVC trainer on CPU, with random data.

    python bench/train.py [--steps 3] [--batch-size 2] [--frames 200] [--threads 2]
    python bench/train.py --lengths mixed [--examples 16] [--batch-size 4]
    python bench/train.py --reference [--ref-rounds 2] [--steps 5]   # beside RVC WebUI's step

``--lengths fixed`` (the default) times steps on one batch of ``--frames`` frames per clip.
``--lengths mixed`` times one epoch over a corpus of clips of RVC-like mixed lengths (most near
the slicer's 3.7 s, a third anywhere from 0.4 s to 9 s), batched twice: in a random order, as the
trainer did before it had a bucket sampler, and by length bucket (``BucketBatchSampler``), with the
padding each leaves. Each model size runs in its own process so its peak RSS is its own. Prints one
JSON object.

``--reference`` times our training step beside RVC WebUI's on RVC's own configuration (v2 48k,
full size, batch 4, spectrogram frames 370 / 360 / 345 / 330, segment 17 280 samples, fp32, random
data): the harness's ``bench_train.py`` (``RVC_HARNESS``, default ``../shared/rvc-reference``;
``RVC_SRC``, ``RVC_VENV`` as for ``bench/convert.py --reference``) and ours, each in its own
process, interleaved for ``--ref-rounds`` rounds; ``ratio`` is RVC's median seconds per step over
ours.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from agents.trainer.data import Batch, BucketBatchSampler, Example, collate
from agents.trainer.train import TrainConfig, TrainPrecision, build_trainer
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


def mixed_lengths(count: int, seed: int = 0) -> list[int]:
    """Spectrogram frames of an RVC-like sliced dataset: mostly 3.3-3.7 s, a third 0.4-9 s."""
    rng = np.random.default_rng(seed)
    return [
        int(rng.integers(40, 901)) if rng.random() < 1 / 3 else int(rng.integers(330, 371))
        for _ in range(count)
    ]


def random_example(config: Any, frames: int, gen: torch.Generator) -> Example:
    hop = config.audio.hop_length
    return Example(
        phone=torch.randn(frames, config.phone_dim, generator=gen),
        pitch=torch.randint(1, 256, (frames,), generator=gen),
        pitchf=100 + 200 * torch.rand(frames, generator=gen),
        spec=torch.rand(config.synthesizer.spec_channels, frames, generator=gen),
        wave=0.1 * torch.randn(1, frames * hop, generator=gen),
    )


def _trainer(size: str, precision: TrainPrecision, sample_rate: str = "40k") -> Any:
    config = get_config("v2", sample_rate, size)  # type: ignore[arg-type]
    trainer = build_trainer(
        config,
        TrainConfig(version="v2", sample_rate=sample_rate, model_size=size, precision=precision),  # type: ignore[arg-type]
        torch.device("cpu"),  # type: ignore[arg-type]
    )
    return config, trainer


RVC_FRAMES = (370, 360, 345, 330)
"""The harness's per-clip spectrogram frames (about 3.7 s slices at 48 kHz, RVC's preprocessing)."""


def bench_rvc_config(steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """Our step on RVC's configuration, timed per step as the harness times RVC's."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config, trainer = _trainer("full", "fp32", "48k")
    gen = torch.Generator().manual_seed(0)
    batch = collate(
        [random_example(config, frames, gen) for frames in RVC_FRAMES],
        config.audio.hop_length,
        config.synthesizer.segment_frames,
    )
    for _ in range(warmup):
        trainer.step(batch)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - started)
    return {
        "side": "singtome",
        "batch": len(RVC_FRAMES),
        "spec_frames": list(RVC_FRAMES),
        "segment_size": config.train.segment_size,
        "s_per_step": [round(t, 3) for t in times],
        "s_per_step_median": round(statistics.median(times), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    harness = Path(os.environ.get("RVC_HARNESS", root.parent / "shared" / "rvc-reference"))
    rvc_python = (
        Path(os.environ.get("RVC_VENV", Path.home() / "rvcbase" / "venv")) / "bin" / "python"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    ours_cmd = [
        sys.executable, str(Path(__file__).resolve()), "--ours-on-reference",
        "--steps", str(args.steps), "--threads", str(args.threads),
    ]  # fmt: skip
    rvc_cmd = [
        str(rvc_python), str(harness / "bench_train.py"), "--steps", str(args.steps),
        "--warmup", "2", "--threads", str(args.threads),
    ]  # fmt: skip
    ours, rvc = [], []
    for _ in range(args.ref_rounds):
        run = subprocess.run(ours_cmd, env=env, capture_output=True, text=True, check=True)
        ours.append(json.loads(run.stdout.strip().splitlines()[-1]))
        run = subprocess.run(rvc_cmd, env=env, capture_output=True, text=True, check=True)
        rvc.append(json.loads(run.stdout.strip().splitlines()[-1]))
    ours_median = statistics.median(t for r in ours for t in r["s_per_step"])
    rvc_median = statistics.median(r["s_per_step_median"] for r in rvc)
    return {
        "config": "v2 48k full, batch 4, spec frames 370/360/345/330, segment 17280, fp32, CPU",
        "threads": args.threads,
        "rounds": args.ref_rounds,
        "singtome_s_per_step_median": round(ours_median, 3),
        "rvc_s_per_step_median": round(rvc_median, 3),
        "ratio": round(rvc_median / ours_median, 3),
        "singtome": ours,
        "rvc": rvc,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }


def bench_epoch(
    size: str, examples: int, batch_size: int, threads: int, precision: TrainPrecision
) -> dict[str, Any]:
    """One epoch over a mixed-length corpus, batched randomly and by length bucket."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config, trainer = _trainer(size, precision)
    lengths = mixed_lengths(examples)
    gen = torch.Generator().manual_seed(0)
    corpus = [random_example(config, n, gen) for n in lengths]
    segment = config.synthesizer.segment_frames

    def batches(order: list[list[int]]) -> list[Batch]:
        return [collate([corpus[i] for i in b], config.audio.hop_length, segment) for b in order]

    perm = torch.randperm(examples, generator=torch.Generator().manual_seed(1)).tolist()
    orders = {
        "random": [perm[i : i + batch_size] for i in range(0, examples, batch_size)],
        "bucket": list(BucketBatchSampler(lengths, batch_size, seed=1)),
    }
    trainer.step(batches([[0]])[0])  # warm-up: allocator, kernels
    runs = {}
    for name, order in orders.items():
        prepared = batches(order)
        padded = sum(b.spec.shape[0] * b.spec.shape[2] for b in prepared)
        started = time.perf_counter()
        for batch in prepared:
            trainer.step(batch)
        elapsed = time.perf_counter() - started
        runs[name] = {
            "steps": len(prepared),
            "seconds": round(elapsed, 3),
            "examples_per_s": round(examples / elapsed, 4),
            "padding_fraction": round(1 - sum(lengths) / padded, 4),
        }
    return {
        "model": f"v2-40k-{size}",
        "precision": trainer.precision.name,
        "examples": examples,
        "audio_s": round(sum(lengths) / 100, 2),
        "batch_size": batch_size,
        "epoch": runs,
        "speedup_bucket_vs_random": round(runs["random"]["seconds"] / runs["bucket"]["seconds"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bench_one(
    size: str, steps: int, batch_size: int, frames: int, threads: int, precision: TrainPrecision
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config, trainer = _trainer(size, precision)
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
        "precision": trainer.precision.name,
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


def _child(queue: Any, mixed: bool, *args: Any) -> None:
    queue.put(bench_epoch(*args) if mixed else bench_one(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"])
    parser.add_argument("--lengths", choices=["fixed", "mixed"], default="fixed")
    parser.add_argument("--examples", type=int, default=16, help="corpus size (--lengths mixed)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--reference", action="store_true", help="time RVC WebUI's step beside")
    parser.add_argument("--ref-rounds", type=int, default=2)
    parser.add_argument("--ours-on-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_on_reference:
        print(json.dumps(bench_rvc_config(args.steps, 2, args.threads)))
        return
    if args.reference:
        print(json.dumps(run_reference(args), indent=2))
        return
    mixed = args.lengths == "mixed"

    ctx = mp.get_context("spawn")
    results = []
    for size in args.sizes:
        steps = args.tiny_steps if size == "tiny" else args.steps
        queue = ctx.Queue()
        work = (
            (size, args.examples, args.batch_size, args.threads, args.precision)
            if mixed
            else (size, steps, args.batch_size, args.frames, args.threads, args.precision)
        )
        proc = ctx.Process(target=_child, args=(queue, mixed, *work))
        proc.start()
        results.append(queue.get())
        proc.join()
    report = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": psutil.cpu_count(),
        "threads": args.threads,
        "lengths": args.lengths,
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
