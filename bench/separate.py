"""Separator benchmark: real-time factor and peak memory for a 1-minute and a 10-minute song.

    python bench/separate.py [--durations 60 600] [--model spleeter] [--chunk-s 30]

Prints one JSON object. Each song length runs in its own process so its peak RSS is its own; if
memory is bounded by the chunk length, the 10-minute peak is about the 1-minute peak.
The songs are a synthetic 30 s mix (sung vocal + band) repeated, written as FLAC block by block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOP_S = 30.0


def write_song(path: Path, duration_s: float) -> None:
    import numpy as np
    import soundfile as sf

    from frontends import demo_audio as synth

    vocal, _ = synth.sung_vocal(LOOP_S, seed=1)
    loop = synth.mix(vocal, synth.accompaniment(LOOP_S, seed=1))
    frames = int(duration_s * 44100)
    with sf.SoundFile(str(path), "w", 44100, 2, "PCM_16", format="FLAC") as out:
        written = 0
        while written < frames:
            block = loop[: frames - written]
            out.write(np.ascontiguousarray(block))
            written += len(block)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg decoding)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_case(song: Path, model: str, chunk_s: float, overlap_s: float) -> dict[str, float]:
    """Separate one song in this process; report wall time (decode + separation + FLAC writing,
    after the model is loaded) and this process's peak RSS."""
    from agents.separator.backends import load_backend
    from agents.separator.stage import SeparationParams, separate
    from foundation.logging import configure_logging
    from streams.settings import Settings

    configure_logging("WARNING")
    settings = Settings(separator={"chunk_s": chunk_s, "overlap_s": overlap_s})
    start = time.perf_counter()
    load_backend(model, settings.models.dir)  # a worker loads once; time it apart from the song
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        result = separate(
            song,
            out,
            SeparationParams(model),
            settings.separator,
            models=settings.models,
            audio=settings.audio,
        )
        wall = time.perf_counter() - start
        # CPU seconds (all threads) are less distorted than wall time on a shared machine.
        cpu = _cpu_seconds() - cpu_start
        stems_mb = sum(p.stat().st_size for p in result.stems.values()) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "duration_s": round(result.duration_s, 1),
        "model_load_s": round(load_s, 1),
        "wall_s": round(wall, 1),
        "real_time_factor": round(wall / result.duration_s, 3),
        "cpu_s": round(cpu, 1),
        "cpu_s_per_audio_s": round(cpu / result.duration_s, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "stems_mb": round(stems_mb, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0])
    parser.add_argument("--model", default="spleeter")
    parser.add_argument("--chunk-s", type=float, default=30.0)
    parser.add_argument("--overlap-s", type=float, default=2.0)
    parser.add_argument("--case", type=Path, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.chunk_s, args.overlap_s)))
        return 0

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for duration in args.durations:
            song = Path(tmp) / f"song_{int(duration)}s.flac"
            write_song(song, duration)
            child = subprocess.run(
                [
                    sys.executable, __file__, "--case", str(song), "--model", args.model,
                    "--chunk-s", str(args.chunk_s), "--overlap-s", str(args.overlap_s),
                ],
                capture_output=True, text=True, check=True, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            cases.append(json.loads(child.stdout.strip().splitlines()[-1]))
            song.unlink()
    report = {
        "model": args.model,
        "chunk_s": args.chunk_s,
        "overlap_s": args.overlap_s,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cases": cases,
    }
    if len(cases) > 1:
        report["peak_rss_growth_mb"] = round(cases[-1]["peak_rss_mb"] - cases[0]["peak_rss_mb"], 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
