"""Per-hop latency and throughput of the event backbone with no-op (copy) stages, as JSON.

    python bench/pipeline.py [--jobs 50] [--workers-per-stage 1]

Starts its own local broker and S3 server (test ports, a temporary folder), one worker process per
stage with the copy-and-tag handlers of tests/stages.py, publishes N jobs at once and reads the
``track.ready`` events. Hop latency is the time between one stage finishing and the next one
starting (broker + consumer), taken from the events' history; stage time is the handler's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from foundation.logging import configure_logging
from schemas.events import TrackReady
from streams.client import publish
from streams.topics import TRACK_READY
from tests.pipeline import Pipeline, local_stack

STAGES = ("separator", "trainer", "converter", "mixer")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--workers-per-stage", type=int, default=1)
    args = parser.parse_args()
    configure_logging("WARNING", "console")  # stdout is for the JSON result

    with tempfile.TemporaryDirectory() as tmp, local_stack() as stack:
        line = Pipeline(stack, logs=Path(tmp))
        try:
            for _ in range(args.workers_per_stage):
                line.start_test_workers()
            events = line.songs("bench", args.jobs)
            started = time.monotonic()
            publish(line.settings, *events)
            ready = [
                e
                for e in line.events(TRACK_READY, until=args.jobs, timeout_s=600)
                if isinstance(e, TrackReady)
            ]
            elapsed = time.monotonic() - started
        finally:
            line.stop()

    hops: dict[str, list[float]] = {}
    stage_time: dict[str, list[float]] = {s: [] for s in STAGES}
    end_to_end: list[float] = []
    for event in ready:
        history = event.history
        for record in history:
            stage_time[record.stage].append(
                (record.finished_at - record.started_at).total_seconds()
            )
        for before, after in itertools.pairwise(history):
            name = f"{before.stage}->{after.stage}"
            hops.setdefault(name, []).append(
                (after.started_at - before.finished_at).total_seconds()
            )
        first = history[0].started_at
        end_to_end.append((history[-1].finished_at - first).total_seconds())
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "completed": len(ready),
                "workers_per_stage": args.workers_per_stage,
                "jobs_per_s": round(len(ready) / elapsed, 2),
                "hop_latency": {name: summary(values) for name, values in hops.items()},
                "stage_time": {name: summary(values) for name, values in stage_time.items()},
                "end_to_end": summary(end_to_end),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
