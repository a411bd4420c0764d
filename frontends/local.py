"""The whole pipeline in one process, without a broker: `singtome cover`.

The same stage handlers the workers run (the stage registry's, in pipeline order) are called one
after the other, on a local folder used as the object store, so a musician with one laptop gets the
same cover (and the same cache: a second cover with the same voice reuses the trained voice; the
same song reuses its stems). Nothing here imports Faust or the Kafka worker.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from agents.registry import STAGES
from schemas.events import Event, JobOptions, StageRecord, TrackReady
from streams.client import upload_job
from streams.keypolicy import KeyPolicy
from streams.keys import job_event_key
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore, put_json

StageProgress = Callable[[str, float, str], None]


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


def run_cover(
    song: Path,
    *,
    settings: Settings,
    store_dir: Path,
    voice_dir: Path | None = None,
    voice_model: Path | None = None,
    voice_index: Path | None = None,
    options: JobOptions | None = None,
    progress: StageProgress = _no_progress,
    job_id: str | None = None,
) -> tuple[TrackReady, Path]:
    """Run every stage on ``song``; returns ``track.ready`` and the track's path on disk.

    A stage's bad input raises :class:`foundation.errors.StageError` (code + message), as the
    workers would answer with ``track.failed``.
    """
    from datetime import UTC, datetime

    store = LocalStore(store_dir)
    event: Event = upload_job(
        store,
        song,
        voice_dir=voice_dir,
        voice_model=voice_model,
        voice_index=voice_index,
        options=options,
        job_id=job_id,
        upload_prefix=settings.upload_prefix,
    )
    options = event.options
    job_id = event.job_id
    policy = KeyPolicy(settings)  # the same key policy as the workers'
    for declaration in STAGES:
        name = declaration.name
        policy.check_event(event)
        handler = declaration.load()
        workdir = Path(tempfile.mkdtemp(prefix=f"singtome-{name}-"))
        ctx = StageContext(
            stage=name,
            settings=settings,
            store=policy.store_for(store, job_id, workdir),
            workdir=workdir,
            progress=lambda f, m, name=name: progress(name, f, m),  # type: ignore[misc]
            force=options.force,
        )
        started = datetime.now(UTC)
        progress(name, 0.0, "started")
        try:
            output = handler(event, ctx)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        output.history = [
            *event.history,
            StageRecord(
                stage=name,
                started_at=started,
                finished_at=datetime.now(UTC),
                cache_hit=bool(getattr(output, "cache_hit", False)),
            ),
        ]
        put_json(store, job_event_key(job_id, output.topic), output.model_dump(mode="json"))
        progress(name, 1.0, "done")
        event = output
    assert isinstance(event, TrackReady)
    return event, store.root / event.track_key
