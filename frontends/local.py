"""The whole pipeline in one process, without a broker: `singtome cover`.

The same stage handlers the workers run (the stage registry's, in pipeline order) are run one after
the other by the workers' own per-event runner (:class:`streams.runner.Runner`: the key policy,
duplicate marks, job state, retries of transient errors, error codes), on a local folder used as
the object store, with an in-process emitter in place of the broker. A musician with one laptop
gets the same cover (and the same cache: a second cover with the same voice reuses the trained
voice; the same song reuses its stems) and the same answers to bad input. Nothing here imports
Faust or the Kafka worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agents.registry import STAGES
from foundation.errors import StageError, TransientError
from schemas.events import Event, JobOptions, JobProgress, TrackReady, encode
from schemas.flow import STAGES as FLOW
from streams.client import VoiceSource, upload_job
from streams.metrics import Metrics
from streams.runner import Outcome, Runner
from streams.settings import Settings
from streams.store import LocalStore
from streams.topics import JOB_PROGRESS

StageProgress = Callable[[str, float, str], None]


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


class LocalEmitter:
    """The broker of the one-process cover: ``job.progress`` goes to the caller's progress
    function; every other message (a stage's answer, ``track.failed``, a DLQ copy) is kept."""

    def __init__(self, progress: StageProgress) -> None:
        self.progress = progress
        self.sent: list[tuple[str, str, bytes | None]] = []

    async def send(
        self, topic: str, key: str, value: bytes | None, headers: dict[str, bytes] | None = None
    ) -> None:
        if topic == JOB_PROGRESS and value is not None:
            update = JobProgress.model_validate_json(value)
            self.progress(update.stage, update.fraction, update.message)
            return
        self.sent.append((topic, key, value))


def run_cover(
    song: Path,
    *,
    settings: Settings,
    store_dir: Path,
    voice: VoiceSource | None = None,
    options: JobOptions | None = None,
    progress: StageProgress = _no_progress,
    job_id: str | None = None,
) -> tuple[TrackReady, Path]:
    """Run every stage on ``song``; returns ``track.ready`` and the track's path on disk.

    A stage's failure raises :class:`foundation.errors.StageError` with the code and message of the
    ``track.failed`` a worker would answer (:class:`~foundation.errors.TransientError` when that
    answer is retriable).
    """
    store = LocalStore(store_dir)
    event: Event = upload_job(
        store,
        song,
        voice=voice,
        options=options,
        job_id=job_id,
        upload_prefix=settings.storage.upload_prefix,
    )
    emitter = LocalEmitter(progress)
    metrics = Metrics()
    stage_calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="singtome-stage")
    state_calls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="singtome-state")
    try:
        for declaration in STAGES:
            runner = Runner(
                stage=FLOW[declaration.name],
                handler=declaration.load(),
                settings=settings,
                store=store,
                emitter=emitter,
                metrics=metrics,
                executor=stage_calls,
                state_executor=state_calls,
                bounded=False,
            )
            progress(declaration.name, 0.0, "started")
            outcome = asyncio.run(runner.process(encode(event), event.job_id.encode()))
            event = _answer(outcome)
            progress(declaration.name, 1.0, "done")
    finally:
        stage_calls.shutdown(wait=False)
        state_calls.shutdown(wait=False)
    assert isinstance(event, TrackReady)
    return event, store.root / event.track_key


def _answer(outcome: Outcome) -> Event:
    """The stage's output event; its ``track.failed`` raised as a StageError."""
    if outcome.output is not None:
        return outcome.output
    failure = outcome.failure
    if failure is None:
        raise StageError("internal_error", "the stage gave neither an answer nor a failure")
    error = TransientError if failure.retriable else StageError
    raise error(failure.code, failure.message)
