"""Real-time factor and peak memory of the converter: RVC (full-size, random weights) and WORLD.

    python bench/convert.py [--durations 30 180] [--threads 2] [--device cpu] [--f0-method fcpe]

RVC runs the real v2 40k synthesizer (the public f0G40k layer sizes) and a HuBERT-base-sized
content encoder (12 layers, 768 wide, 512-channel conv stack), both randomly initialised, with
the f0 method the service uses when no RMVPE weights are configured (FCPE). WORLD learns a
profile from 20 s of generated speech and converts with it. The input is generated sung vocals
(44.1 kHz, the stems' rate); the output is resampled back to 44.1 kHz, as the stage does.

Each case runs in its own process so its peak RSS is its own. ``rtf`` is conversion time over
audio time (below 1: faster than real time); ``cpu_s_per_audio_s`` is the CPU time spent per
second of audio (independent of other load on a shared machine); model loading is reported
apart. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEM_SR = 44100


def hubert_base_encoder(device: str) -> Any:
    """HuBERT-base's architecture (95M parameters) with random weights."""
    from agents.voice.content import ContentEncoder, EncoderConfig

    config = EncoderConfig(
        extractor_mode="group_norm",
        conv_layers=((512, 10, 5), *((512, 3, 2),) * 4, *((512, 2, 2),) * 2),
        conv_bias=False,
        embed_dim=768,
        pos_conv_kernel=128,
        pos_conv_groups=16,
        num_layers=12,
        num_heads=12,
        ff_dim=3072,
        layer_norm_first=False,
        final_dim=256,
    )
    return ContentEncoder(config).eval().to(device)


def v2_voice_model(device: str) -> Any:
    from agents.voice.checkpoint import VoiceModel
    from agents.voice.configs import get_config
    from agents.voice.synthesizer import build_synthesizer

    config = get_config("v2", "40k")
    synthesizer = build_synthesizer(config.synthesizer, "v2", True, with_posterior=False)
    synthesizer = synthesizer.eval().to(device)
    return VoiceModel(
        synthesizer=synthesizer,
        sr=config.synthesizer.sampling_rate,
        f0=True,
        version="v2",
        speaker_count=config.synthesizer.spk_embed_dim,
    )


def sung_input(seconds: float) -> np.ndarray:
    """Generated sung vocals: 30 s made once, repeated to the wanted length."""
    from streams.demo_audio import sung_vocal

    clip, _ = sung_vocal(min(30.0, seconds), STEM_SR, seed=11)
    repeats = int(np.ceil(seconds * STEM_SR / len(clip)))
    return np.tile(clip, repeats)[: int(seconds * STEM_SR)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench_rvc(seconds: float, threads: int, device: str, f0_method: str) -> dict[str, Any]:
    import soundfile as sf

    from agents.converter.pipeline import convert_rvc
    from agents.voice.f0 import get_f0_extractor
    from schemas.events import ConversionOptions

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    audio = sung_input(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        vocals = Path(tmp) / "vocals.wav"
        sf.write(vocals, audio, STEM_SR)
        del audio
        rss_before_models = _peak_rss_mb()
        started = time.perf_counter()
        voice_model = v2_voice_model(device)
        encoder = hubert_base_encoder(device)
        extractor = get_f0_extractor(f0_method, device=device)
        load_s = time.perf_counter() - started
        started, cpu_started = time.perf_counter(), time.process_time()
        converted, sr = convert_rvc(
            vocals,
            voice_model,
            encoder,
            None,
            ConversionOptions(f0_method=f0_method),
            extractor,
            output_sr=STEM_SR,
        )
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    synth_params = sum(p.numel() for p in voice_model.synthesizer.parameters())
    encoder_params = sum(p.numel() for p in encoder.parameters())
    return {
        "backend": "rvc",
        "audio_s": seconds,
        "output_s": round(len(converted) / sr, 3),
        "load_s": round(load_s, 2),
        "convert_s": round(elapsed, 2),
        "rtf": round(elapsed / seconds, 3),
        "cpu_s_per_audio_s": round(cpu_s / seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_models_mb": round(rss_before_models, 1),
        "synthesizer_params_m": round(synth_params / 1e6, 2),
        "encoder_params_m": round(encoder_params / 1e6, 2),
        "f0_method": f0_method,
        "finite": bool(np.all(np.isfinite(converted))),
    }


def bench_world(seconds: float, threads: int) -> dict[str, Any]:
    from agents.voice.world import EnvelopeStats, analyse_f0_and_envelope, convert_world
    from streams.demo_audio import speech_voice

    stats = EnvelopeStats()
    started = time.perf_counter()
    analyse_f0_and_envelope(speech_voice(20.0, STEM_SR, voice="en+m3", seed=1), STEM_SR, stats)
    profile = stats.profile()
    learn_s = time.perf_counter() - started
    audio = sung_input(seconds)
    started, cpu_started = time.perf_counter(), time.process_time()
    converted = convert_world(audio, STEM_SR, profile)
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    return {
        "backend": "world",
        "audio_s": seconds,
        "output_s": round(len(converted) / STEM_SR, 3),
        "profile_from_20s_s": round(learn_s, 2),
        "convert_s": round(elapsed, 2),
        "rtf": round(elapsed / seconds, 3),
        "cpu_s_per_audio_s": round(cpu_s / seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _child(case: dict[str, Any], queue: Any) -> None:
    try:
        if case["backend"] == "rvc":
            result = bench_rvc(case["seconds"], case["threads"], case["device"], case["f0_method"])
        else:
            result = bench_world(case["seconds"], case["threads"])
    except Exception as exc:  # report, do not hang the parent
        result = {**case, "error": f"{type(exc).__name__}: {exc}"}
    queue.put(result)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(case, queue))
    process.start()
    result = queue.get()
    process.join()
    return dict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--durations", type=float, nargs="+", default=[30.0, 180.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--f0-method", default="fcpe")
    parser.add_argument("--backends", nargs="+", default=["rvc", "world"])
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    results = [
        run_case(
            {
                "backend": backend,
                "seconds": seconds,
                "threads": args.threads,
                "device": args.device,
                "f0_method": args.f0_method,
            }
        )
        for backend in args.backends
        for seconds in args.durations
    ]
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(logical=True),
            "threads": args.threads,
            "device": args.device,
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
            # Other work on a shared machine slows the wall-clock numbers (not cpu_s_per_audio_s).
            "load_avg_1m_at_start": round(load_at_start, 2),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
