"""Several songs, one voice: `singtome cover SONG... | DIR --voice ... --out DIR/`.

The voice is trained (or loaded) once: the first song that gets through the trainer trains it
from the dataset (or reuses it from the local store's cache); every later song is given that
trained model, so it is never trained again, whatever ``--force`` says. A song that fails is
recorded and the others still covered; a voice that cannot be trained stops the batch, since
every later song would fail the same way.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from foundation.errors import StageError
from frontends.local import run_cover
from schemas.events import JobOptions, TrackFailed, TrackReady
from streams.client import AUDIO_SUFFIXES, VoiceSource
from streams.settings import Settings
from streams.store import ObjectStore

# (song index, stage, fraction of that stage, message)
SongProgress = Callable[[int, str, float, str], None]


@dataclass
class CoverOutcome:
    song: Path
    ready: TrackReady | None = None
    track: Path | None = None
    error: str | None = None  # "code: message"
    voice: str = ""  # "trained", "reused" (cache), "given" (a model), "from song N"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.ready is not None


def expand_songs(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder gives its audio files (sorted, not recursive)."""
    songs: list[Path] = []
    for path in paths:
        if path.is_dir():
            songs.extend(
                p
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
        else:
            songs.append(path)
    return songs


def cover_name(song: Path, fmt: str, taken: set[str]) -> str:
    """``<song stem>.<format>``, made unique within the batch."""
    name, n = f"{song.stem}.{fmt}", 2
    while name in taken:
        name, n = f"{song.stem}-{n}.{fmt}", n + 1
    taken.add(name)
    return name


def run_covers(
    songs: Sequence[Path],
    *,
    settings: Settings,
    store_dir: Path,
    voice: VoiceSource,
    options: JobOptions | None = None,
    out_dir: Path | None = None,
    progress: SongProgress | None = None,
) -> list[CoverOutcome]:
    options = options or JobOptions()
    outcomes = [CoverOutcome(song) for song in songs]
    trained: tuple[VoiceSource, int] | None = None  # the trained model, from which song
    taken: set[str] = set()
    for index, outcome in enumerate(outcomes):
        stage_now = {"name": ""}

        def report(
            stage: str,
            fraction: float,
            message: str,
            index: int = index,
            stage_now: dict[str, str] = stage_now,
        ) -> None:
            stage_now["name"] = stage
            if progress:
                progress(index, stage, fraction, message)

        started = time.monotonic()
        try:
            ready, track = run_cover(
                outcome.song,
                settings=settings,
                store_dir=store_dir,
                voice=trained[0] if trained else voice,
                options=options,
                progress=report,
            )
        except StageError as exc:
            outcome.error = f"{exc.code}: {exc.message}"
            outcome.seconds = time.monotonic() - started
            if stage_now["name"] == "trainer" and trained is None and voice.dataset is not None:
                for later in outcomes[index + 1 :]:
                    later.error = f"skipped: the voice could not be trained ({exc.code})"
                break
            continue
        outcome.seconds = time.monotonic() - started
        outcome.ready = ready
        history = {r.stage: r for r in ready.history}
        if trained is not None:
            outcome.voice = f"from song {trained[1] + 1}"
        elif voice.dataset is None:
            outcome.voice = "given"
        else:
            hit = history.get("trainer")
            outcome.voice = "reused" if hit and hit.cache_hit else "trained"
            if ready.keys.voice_model:
                root = Path(store_dir)
                voice_index_key = ready.keys.voice_index
                trained_model = VoiceSource(
                    model=root / ready.keys.voice_model,
                    index=root / voice_index_key if voice_index_key else None,
                )
                trained = (trained_model, index)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / cover_name(outcome.song, ready.format, taken)
            shutil.copyfile(track, target)
            track = target
        outcome.track = track
    return outcomes


# --------------------------------------------------------------------------------------------------
# following several submitted jobs (`singtome submit SONG... --wait`)
# --------------------------------------------------------------------------------------------------

JobStateFn = Callable[[str, dict[str, dict[str, object]]], None]


def wait_for_jobs(
    store: ObjectStore,
    job_ids: Sequence[str],
    timeout_s: float,
    on_state: JobStateFn | None = None,
    poll_s: float = 0.5,
) -> dict[str, TrackReady | TrackFailed | None]:
    """Poll every job's state until each has ``track.ready`` or ``track.failed``; a job still
    running at the deadline maps to None."""
    from streams.client import job_state
    from streams.topics import TRACK_FAILED, TRACK_READY

    results: dict[str, TrackReady | TrackFailed | None] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(job_ids)
    while pending:
        for job_id in list(pending):
            state = job_state(store, job_id)
            if on_state:
                on_state(job_id, state)  # type: ignore[arg-type]
            if TRACK_READY in state:
                results[job_id] = TrackReady.model_validate(state[TRACK_READY])
            elif TRACK_FAILED in state:
                results[job_id] = TrackFailed.model_validate(state[TRACK_FAILED])
            else:
                continue
            pending.remove(job_id)
        if pending and time.monotonic() > deadline:
            break
        if pending:
            time.sleep(poll_s)
    for job_id in pending:
        results[job_id] = None
    return {job_id: results[job_id] for job_id in job_ids}


def job_fraction(state: dict[str, dict[str, object]]) -> tuple[float, str]:
    """How far a job is (0..1, by stages done and the running stage's progress) and a note."""
    from streams.topics import STAGES

    names = list(STAGES)
    done = [name for name, stage in STAGES.items() if stage.produces in state]
    progress = state.get("job.progress", {})
    running = progress.get("stage")
    fraction = len(done) / len(names)
    note = f"{done[-1]} done" if done else "queued"
    if running in STAGES and running not in done:
        part = progress.get("fraction", 0.0)
        fraction += float(part if isinstance(part, int | float) else 0.0) / len(names)
        note = f"{running}: {progress.get('message', '')}"
    failed = state.get("track.failed")
    if failed:
        note = f"FAILED at {failed.get('stage')}: {failed.get('code')}"
    return min(fraction, 1.0), note
