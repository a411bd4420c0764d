"""Model download throughput through the real fetcher, from a loopback HTTP server (no network).

    python bench/pull.py [--mb 200] [--cuts 3]

Serves a generated file of ``--mb`` MB and pulls it with ``streams.models.fetch.pull``: once
straight, once with the connection cut ``--cuts`` times (each resumed with a Range request).
Prints JSON: seconds, MB/s including the sha256 check and the rename, bytes sent by the server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.models.fetch import FetchConfig, pull
from streams.models.manifest import ModelEntry
from tests.modelserver import model_server


def run(mb: int, cuts: int) -> dict[str, object]:
    body = os.urandom(mb * 1_000_000)
    digest = hashlib.sha256(body).hexdigest()
    results: dict[str, object] = {"mb": mb, "cuts": cuts}
    with model_server() as server, tempfile.TemporaryDirectory() as folder:
        for label, cut_after in (("straight", []), ("resumed", [len(body) // (cuts + 1)] * cuts)):
            path = f"/bench/{label}.bin"
            server.add(path, body, cut_after=list(cut_after))
            entry = ModelEntry(
                name=f"{label}.bin",
                kind="other",
                url=server.url + path,
                size=len(body),
                sha256=digest,
                licence="bench",
            )
            cfg = FetchConfig(model_dir=Path(folder) / label, retries=cuts + 1, backoff_s=0.0)
            started = time.perf_counter()
            pull(entry, cfg)
            seconds = time.perf_counter() - started
            sent = sum(r.sent for r in server.requests_for(path))
            results[label] = {
                "seconds": round(seconds, 2),
                "mb_per_s": round(mb / seconds, 1),
                "requests": len(server.requests_for(path)),
                "bytes_sent_over_size": round(sent / len(body), 4),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--cuts", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.mb, args.cuts)))


if __name__ == "__main__":
    main()
