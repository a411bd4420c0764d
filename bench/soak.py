"""Soak: many jobs, poison mixed in, workers killed with SIGKILL and replaced, as JSON.

    python bench/soak.py [--jobs 500] [--poison 1000] [--kill-every 20] [--workers-per-stage 2]

Runs the copy-and-tag test stages (tests/stages.py) on its own local broker and S3 server (test
ports; do not run it beside the test suite). Reports jobs completed, lost, duplicate answers,
failures answered, end-to-end latency and the workers' peak RSS. A lost job is a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline import summary
from foundation.logging import configure_logging
from schemas.events import JobOptions, ObjectKeys, SongUploaded, TrackReady, VoiceOptions
from streams.client import publish_raw_async
from streams.settings import CACHE_HOME
from streams.topics import SONG_UPLOADED, TRACK_FAILED, TRACK_READY
from tests.pipeline import Pipeline, local_stack

STAGES = ("separator", "trainer", "converter", "mixer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--poison", type=int, default=1000)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds; 0: never")
    parser.add_argument("--workers-per-stage", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    configure_logging("WARNING", "console")  # stdout is for the JSON result
    rng = random.Random(1)

    with local_stack(CACHE_HOME / "soak-stack") as stack:
        line = Pipeline(stack, logs=CACHE_HOME / "soak-stack")
        workers: dict[str, list[object]] = {s: [] for s in STAGES}
        peak_rss = 0
        kills = 0
        stop = threading.Event()
        try:
            for stage in STAGES:
                for _ in range(args.workers_per_stage):
                    workers[stage].append(line.start_worker(stage, f"tests.stages:{stage}")[0])

            def watch() -> None:
                nonlocal peak_rss
                while not stop.wait(1.0):
                    total = 0
                    for proc in line.procs:
                        try:
                            total += psutil.Process(proc.pid).memory_info().rss
                        except psutil.NoSuchProcess:
                            continue
                    peak_rss = max(peak_rss, total)

            threading.Thread(target=watch, daemon=True).start()
            messages: list[tuple[bytes | None, bytes]] = []
            for i in range(args.jobs):
                job_id = f"soak-{i:05d}"
                key = f"uploads/{job_id}/song.wav"
                line.store.put_bytes(key, job_id.encode())
                event = SongUploaded(
                    job_id=job_id,
                    keys=ObjectKeys(song=key),
                    options=JobOptions(voice=VoiceOptions(dataset_key=f"uploads/{job_id}/voice/")),
                )
                messages.append((job_id.encode(), event.model_dump_json().encode()))
            for i in range(args.poison):
                messages.append((f"poison-{i}".encode(), b"\x00 not an event %d" % i))
            rng.shuffle(messages)
            started = time.monotonic()
            asyncio.run(publish_raw_async(line.settings, SONG_UPLOADED, messages))

            ready: dict[str, TrackReady] = {}
            answers = 0
            last_kill = time.monotonic()
            while len(ready) < args.jobs and time.monotonic() - started < args.timeout:
                if args.kill_every and time.monotonic() - last_kill > args.kill_every:
                    stage = rng.choice(STAGES)
                    victim = workers[stage].pop(0)
                    os.killpg(victim.pid, signal.SIGKILL)  # type: ignore[attr-defined]
                    workers[stage].append(line.start_worker(stage, f"tests.stages:{stage}")[0])
                    kills += 1
                    last_kill = time.monotonic()
                events = line.events(TRACK_READY, until=0, timeout_s=3)
                answers = len(events)
                ready = {e.job_id: e for e in events if isinstance(e, TrackReady)}
                time.sleep(2)
            elapsed = time.monotonic() - started
            failed = line.read(TRACK_FAILED, until=args.poison, timeout_s=60)
        finally:
            stop.set()
            line.stop()

    latency = [
        (e.history[-1].finished_at - e.history[0].started_at).total_seconds()
        for e in ready.values()
    ]
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "completed": len(ready),
                "lost": args.jobs - len(ready),
                "duplicate_answers": answers - len(ready),
                "poison": args.poison,
                "failures_answered": len(failed),
                "workers_killed": kills,
                "seconds": round(elapsed, 1),
                "end_to_end": summary(latency),
                "peak_rss_mb_all_workers": round(peak_rss / 2**20, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
