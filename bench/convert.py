"""Real-time factor and peak memory of the converter: RVC (full-size, random weights) and WORLD.

    python bench/convert.py [--durations 30 180] [--threads 2] [--device cpu] [--f0-method fcpe]
                            [--runtime auto|torch|onnx|plain] [--size full|tiny]
    python bench/convert.py --backends rvc --size tiny --durations 60 600   # memory vs length
    python bench/convert.py --reference [--ref-seconds 30] [--ref-rounds 3] [--warm 1]

RVC runs the real v2 40k synthesizer (the public f0G40k layer sizes) and a HuBERT-base-sized
content encoder (12 layers, 768 wide, 512-channel conv stack), both randomly initialised, with
the f0 method the service uses when no RMVPE weights are configured (FCPE), through the
synthesizer path the stage takes by default (``--runtime auto``; ``plain`` is
``Synthesizer.infer``). ``--size tiny`` shrinks both models so that what grows with the song's
length (pitch tracking, audio buffers, resampling) stands out from the models. WORLD learns a
profile from 20 s of generated speech and converts with it. The input is generated sung vocals
(44.1 kHz, the stems' rate); the output is resampled back to 44.1 kHz in temporary files and
encoded to FLAC block by block, as the stage does.

Each case runs in its own process so its peak RSS is its own. ``rtf`` is conversion time over
audio time (below 1: faster than real time); ``cpu_s_per_audio_s`` is the CPU time spent per
second of audio (independent of other load on a shared machine); model loading is reported
apart. Prints one JSON object.

Side by side with RVC WebUI (``--reference``; also whenever ``RVC_SRC`` is set): the timing harness
of ``shared/rvc-reference`` (``RVC_HARNESS``, default ``../shared/rvc-reference`` beside this
checkout) rebuilds RVC WebUI at its pinned commit (``RVC_SRC``) in a venv of its own
(``RVC_VENV``) with random weights of the real sizes in ``RVC_BENCH_WORK`` (a v2 48k ``.pth``, a
HuBERT-base folder, a 20 000 x 768 IVF index, sung vocals). Both sides load those same files and
convert the same wav with f0 ``pm``, index_rate 0.75, rms_mix_rate 0.25, protect 0.33, warm, on
``--threads`` threads, each in its own process, interleaved (ours, RVC, ours, RVC, ...) because
the machine may be shared. ``ratio`` is RVC's median warm time over ours, for wall time and for
CPU seconds. Without the reference only our absolute figures are printed.
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


def hubert_base_encoder(device: str, size: str = "full") -> Any:
    """HuBERT-base's architecture (95M parameters) with random weights; ``tiny``: the same
    framing and 768-d output with 64 conv channels and one layer (for memory-in-length runs)."""
    from agents.voice.content import ContentEncoder, EncoderConfig

    conv = 512 if size == "full" else 64
    config = EncoderConfig(
        extractor_mode="group_norm",
        conv_layers=((conv, 10, 5), *((conv, 3, 2),) * 4, *((conv, 2, 2),) * 2),
        conv_bias=False,
        embed_dim=768,
        pos_conv_kernel=128,
        pos_conv_groups=16,
        num_layers=12 if size == "full" else 1,
        num_heads=12,
        ff_dim=3072 if size == "full" else 256,
        layer_norm_first=False,
        final_dim=256,
    )
    return ContentEncoder(config).eval().to(device)


def v2_voice_model(device: str, size: str = "full") -> Any:
    from agents.voice.checkpoint import VoiceModel
    from agents.voice.configs import get_config
    from agents.voice.synthesizer import build_synthesizer

    config = get_config("v2", "40k", size)  # type: ignore[arg-type]
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
    from frontends.demo_audio import sung_vocal

    clip, _ = sung_vocal(min(30.0, seconds), STEM_SR, seed=11)
    repeats = int(np.ceil(seconds * STEM_SR / len(clip)))
    return np.tile(clip, repeats)[: int(seconds * STEM_SR)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench_rvc(
    seconds: float,
    threads: int,
    device: str,
    f0_method: str,
    size: str = "full",
    runtime: str = "plain",
) -> dict[str, Any]:
    import soundfile as sf

    from agents.converter.pipeline import convert_rvc
    from agents.voice.f0 import get_f0_extractor
    from agents.voice.inference import prepare_for_inference
    from foundation.signal import DiskSignal, blocks, write_sound_file
    from schemas.events import ConversionOptions
    from streams.allocator import keep_freed_memory

    keep_freed_memory()  # as the worker does

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    audio = sung_input(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        vocals = Path(tmp) / "vocals.wav"
        sf.write(vocals, audio, STEM_SR)
        del audio
        rss_before_models = _peak_rss_mb()
        started = time.perf_counter()
        voice_model = v2_voice_model(device, size)
        if runtime != "plain":  # the stage's default: the fast synthesizer path
            prepare_for_inference(voice_model, runtime)  # type: ignore[arg-type]
        encoder = hubert_base_encoder(device, size)
        extractor = get_f0_extractor(f0_method, device=device)
        load_s = time.perf_counter() - started
        started, cpu_started = time.perf_counter(), time.process_time()
        # As the stage does it: the converted song in temporary files, encoded block by block.
        converted, sr = convert_rvc(
            vocals,
            voice_model,
            encoder,
            None,
            ConversionOptions(f0_method=f0_method),
            extractor,
            output_sr=STEM_SR,
            allocate=DiskSignal.factory(tmp),
        )
        write_sound_file(Path(tmp) / "converted.flac", converted, sr)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        output_s = len(converted) / sr
        finite = all(np.all(np.isfinite(block)) for _, block in blocks(converted))
    synth_params = sum(p.numel() for p in voice_model.synthesizer.parameters())
    encoder_params = sum(p.numel() for p in encoder.parameters())
    return {
        "backend": "rvc",
        "audio_s": seconds,
        "output_s": round(output_s, 3),
        "load_s": round(load_s, 2),
        "convert_s": round(elapsed, 2),
        "rtf": round(elapsed / seconds, 3),
        "cpu_s_per_audio_s": round(cpu_s / seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_models_mb": round(rss_before_models, 1),
        "synthesizer_params_m": round(synth_params / 1e6, 2),
        "encoder_params_m": round(encoder_params / 1e6, 2),
        "f0_method": f0_method,
        "model_size": size,
        "runtime": runtime,
        "finite": bool(finite),
    }


def bench_world(seconds: float, threads: int) -> dict[str, Any]:
    import soundfile as sf

    from agents.voice.world import EnvelopeStats, analyse_f0_and_envelope, convert_world_with_report
    from foundation.audio import load_signal
    from foundation.signal import DiskSignal, write_sound_file
    from frontends.demo_audio import speech_voice

    stats = EnvelopeStats()
    started = time.perf_counter()
    analyse_f0_and_envelope(speech_voice(20.0, STEM_SR, voice="en+m3", seed=1), STEM_SR, stats)
    profile = stats.profile()
    learn_s = time.perf_counter() - started
    audio = sung_input(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        vocals_path = Path(tmp) / "vocals.wav"
        sf.write(vocals_path, audio, STEM_SR)
        del audio
        # As the stage does it: the vocals and every song-length buffer in temporary files.
        started, cpu_started = time.perf_counter(), time.process_time()
        vocals = load_signal(vocals_path, STEM_SR, DiskSignal.factory(tmp))
        converted, _ = convert_world_with_report(vocals, STEM_SR, profile, scratch=tmp)
        write_sound_file(Path(tmp) / "converted.flac", converted, STEM_SR)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        output_s = len(converted) / STEM_SR
    return {
        "backend": "world",
        "audio_s": seconds,
        "output_s": round(output_s, 3),
        "profile_from_20s_s": round(learn_s, 2),
        "convert_s": round(elapsed, 2),
        "rtf": round(elapsed / seconds, 3),
        "cpu_s_per_audio_s": round(cpu_s / seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


REFERENCE_KNOBS = {"index_rate": 0.75, "rms_mix_rate": 0.25, "protect": 0.33, "filter_radius": 3}
REFERENCE_MODEL = "bench48k"


def _reference_files(work: Path, seconds: int) -> dict[str, Path]:
    indexes = sorted((work / "logs" / REFERENCE_MODEL).glob("added_IVF*_v2.index"))
    files = {
        "model": work / "weights" / f"{REFERENCE_MODEL}.pth",
        "hubert": work / "hubert_base",
        "index": indexes[0] if indexes else work / "logs" / "missing.index",
        "vocals": work / "audio" / f"vocal_{seconds}s_44k.wav",
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SystemExit(f"reference assets missing (run make_assets.py): {', '.join(missing)}")
    return files


def _usage_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_reference_files(
    work: Path, seconds: int, warm: int, threads: int, runtime: str
) -> dict[str, Any]:
    """Our converter on the reference's own files, timed per call as the harness times RVC."""
    from streams.allocator import keep_freed_memory

    keep_freed_memory()
    from agents.converter.pipeline import convert_rvc
    from agents.voice.checkpoint import load_voice_model
    from agents.voice.content import load_content_encoder
    from agents.voice.f0 import get_f0_extractor
    from agents.voice.index import load_index
    from agents.voice.inference import prepare_for_inference
    from schemas.events import ConversionOptions

    torch.set_num_threads(threads)
    files = _reference_files(work, seconds)
    started = time.perf_counter()
    voice_model = load_voice_model(files["model"], "cpu")
    if runtime != "plain":
        prepare_for_inference(voice_model, runtime)  # type: ignore[arg-type]
    encoder = load_content_encoder(files["hubert"], "cpu")
    index = load_index(files["index"])
    extractor = get_f0_extractor("pm")
    load_s = time.perf_counter() - started
    params = ConversionOptions(f0_method="pm", **REFERENCE_KNOBS)
    calls = []
    for _ in range(1 + warm):
        cpu_started, started = _usage_s(), time.perf_counter()
        load_before = os.getloadavg()[0]
        converted, sr = convert_rvc(files["vocals"], voice_model, encoder, index, params, extractor)
        calls.append(
            {
                "wall_s": round(time.perf_counter() - started, 3),
                "cpu_s": round(_usage_s() - cpu_started, 2),
                "load1": round(load_before, 2),
            }
        )
    return {
        "side": "singtome",
        "runtime": voice_model.fast.runtime if voice_model.fast is not None else "plain",
        "seconds": seconds,
        "load_s": round(load_s, 2),
        "first_call": calls[0],
        "warm_calls": calls[1:],
        "out_sr": sr,
        "out_samples": len(converted),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    rvc_src = Path(os.environ["RVC_SRC"])
    harness = Path(os.environ.get("RVC_HARNESS", ROOT.parent / "shared" / "rvc-reference"))
    rvc_python = (
        Path(os.environ.get("RVC_VENV", Path.home() / "rvcbase" / "venv")) / "bin" / "python"
    )
    work = Path(os.environ.get("RVC_BENCH_WORK", Path.home() / "rvcbase" / "work"))
    _reference_files(work, args.ref_seconds)
    env = {**os.environ, "RVC_SRC": str(rvc_src), "RVC_BENCH_WORK": str(work)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OPENBLAS_NUM_THREADS": "1"})
    ours_cmd = [
        sys.executable, str(Path(__file__).resolve()), "--ours-on-reference",
        "--ref-seconds", str(args.ref_seconds), "--warm", str(args.warm),
        "--threads", str(args.threads), "--runtime", args.runtime,
    ]  # fmt: skip
    rvc_cmd = [
        str(rvc_python), str(harness / "rvc_infer_cpu.py"), "--seconds", str(args.ref_seconds),
        "--f0", "pm", "--warm", str(args.warm), "--threads", str(args.threads),
    ]  # fmt: skip
    ours_runs: list[dict[str, Any]] = []
    rvc_runs: list[dict[str, Any]] = []
    for _ in range(args.ref_rounds):
        ours = subprocess.run(ours_cmd, env=env, capture_output=True, text=True, check=True)
        ours_runs.append(_json_lines(ours.stdout)[-1])
        rvc = subprocess.run(rvc_cmd, env=env, capture_output=True, text=True, check=True)
        lines = _json_lines(rvc.stdout)
        timing = next(x for x in lines if x.get("bench") == "infer")
        calls = next(x for x in lines if x.get("bench") == "rvc_call_cpu")["calls"]
        rvc_runs.append({**timing, "calls": calls})
    ours_wall = [c["wall_s"] for run in ours_runs for c in run["warm_calls"]]
    ours_cpu = [c["cpu_s"] for run in ours_runs for c in run["warm_calls"]]
    rvc_wall = [c["wall_s"] for run in rvc_runs for c in run["calls"][1:]]
    rvc_cpu = [c["cpu_s"] for run in rvc_runs for c in run["calls"][1:]]
    seconds = args.ref_seconds

    def side(wall: list[float], cpu: list[float], rss: list[float]) -> dict[str, Any]:
        return {
            "warm_s_median": round(_median(wall), 2),
            "warm_s_all": wall,
            "cpu_s_per_audio_s": round(_median(cpu) / seconds, 3),
            "cpu_s_all": cpu,
            "peak_rss_mb_median": round(_median(rss), 1),
        }

    return {
        "reference": "RVC WebUI 4338f12 (random weights of the real sizes, v2 48k)",
        "audio_s": seconds,
        "f0": "pm",
        "knobs": REFERENCE_KNOBS,
        "threads": args.threads,
        "rounds": args.ref_rounds,
        "runtime": ours_runs[0]["runtime"],
        "singtome": side(ours_wall, ours_cpu, [r["peak_rss_mb"] for r in ours_runs]),
        "rvc": side(rvc_wall, rvc_cpu, [r["peak_rss_inproc_mb"] for r in rvc_runs]),
        "ratio_wall": round(_median(rvc_wall) / _median(ours_wall), 3),
        "ratio_cpu": round(_median(rvc_cpu) / _median(ours_cpu), 3),
        "load_avg_1m": [c["load1"] for run in ours_runs for c in run["warm_calls"]],
    }


def _child(case: dict[str, Any], queue: Any) -> None:
    from foundation.logging import configure_logging

    configure_logging("WARNING")  # stdout carries the JSON only
    try:
        if case["backend"] == "rvc":
            result = bench_rvc(
                case["seconds"],
                case["threads"],
                case["device"],
                case["f0_method"],
                case["size"],
                case["runtime"],
            )
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
    parser.add_argument(
        "--backends", nargs="+", default=None, help="default: rvc world (none with --reference)"
    )
    parser.add_argument(
        "--reference", action="store_true", help="time RVC WebUI beside us (needs RVC_SRC)"
    )
    parser.add_argument("--ref-seconds", type=int, default=30)
    parser.add_argument("--ref-rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=1, help="warm calls per process")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "onnx", "plain"],
        help="synthesizer path ('auto': the stage's default; 'plain': Synthesizer.infer)",
    )
    parser.add_argument(
        "--size",
        default="full",
        choices=["full", "tiny"],
        help="RVC model sizes; 'tiny' shows what grows with song length apart from the models",
    )
    parser.add_argument("--ours-on-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_on_reference:
        from foundation.logging import configure_logging

        configure_logging("WARNING")
        work = Path(os.environ.get("RVC_BENCH_WORK", Path.home() / "rvcbase" / "work"))
        result = bench_reference_files(
            work, args.ref_seconds, args.warm, args.threads, args.runtime
        )
        print(json.dumps(result))
        return
    if args.reference and not os.environ.get("RVC_SRC"):
        raise SystemExit("--reference needs RVC_SRC (and RVC_VENV, RVC_BENCH_WORK): see --help")
    reference = args.reference or bool(os.environ.get("RVC_SRC"))
    if args.backends is None:
        args.backends = [] if reference else ["rvc", "world"]
    load_at_start = os.getloadavg()[0]
    results = [
        run_case(
            {
                "backend": backend,
                "seconds": seconds,
                "threads": args.threads,
                "device": args.device,
                "f0_method": args.f0_method,
                "size": args.size,
                "runtime": args.runtime,
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
    if reference:
        report["reference"] = run_reference(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
