"""The mixer's event handler: ``vocals.converted`` in, ``track.ready`` out (no Kafka here).

The track's key is derived from the job (``tracks/<job_id>/cover.<format>``), so a redelivered or
duplicate ``vocals.converted`` lands on the same object. When that object already exists (and the
job does not force recomputation) nothing is re-mixed: the stored track is downloaded and its
duration and loudness re-measured, so the answer is the same ``track.ready`` without a sidecar
file that could drift from the audio.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.mixer.mix import ACCOMPANIMENT, BACKING_VOCALS, VOCALS
from agents.mixer.stage import MixResult, measure_track, mix_track
from foundation.encode import content_type
from foundation.logging import get_logger
from schemas.events import StageRecord, TrackReady, VocalsConverted
from streams.keys import track_key
from streams.stage import StageContext, fetch

log = get_logger(__name__)

STAGE = "mixer"


def handle(event: VocalsConverted, ctx: StageContext) -> TrackReady:
    started_at = datetime.now(UTC)
    output = event.options.output
    fmt = output.format
    key = track_key(event.job_id, fmt)
    local_track = ctx.workdir / f"cover.{fmt}"

    cache_hit = not ctx.force and ctx.store.exists(key)
    if cache_hit:
        log.info("track already mixed; reusing it", track_key=key)
        ctx.store.get_file(key, local_track)
        result = measure_track(local_track, fmt)
        ctx.progress(1.0, "track already mixed")
    else:
        result = _mix(event, ctx, local_track)
        ctx.store.put_file(key, local_track, content_type(fmt))

    expiry_s = ctx.settings.presign_expiry_s
    signed_at = datetime.now(UTC)
    download_url = ctx.store.presign(key, expiry_s)
    finished_at = datetime.now(UTC)
    # The runner appends the mixer's StageRecord to the history; the timings need it now.
    mixer_run = StageRecord(
        stage=STAGE, started_at=started_at, finished_at=finished_at, cache_hit=cache_hit
    )
    return event.follow(
        TrackReady,
        keys=event.keys.model_copy(update={"track": key}),
        track_key=key,
        format=fmt,
        duration_s=result.duration_s,
        loudness_lufs=result.loudness_lufs,
        download_url=download_url,
        url_expires_at=signed_at + timedelta(seconds=expiry_s),
        timings_s=stage_timings([*event.history, mixer_run], event.occurred_at, finished_at),
        cache_hit=cache_hit,
        quality=event.quality,
    )


def _mix(event: VocalsConverted, ctx: StageContext, local_track: Path) -> MixResult:
    stems = {
        VOCALS: fetch(ctx, event.keys.converted_vocals, "converted_vocals.flac"),
        ACCOMPANIMENT: fetch(ctx, event.keys.accompaniment, "accompaniment.flac"),
    }
    # The converted backing vocals when the converter made them, else the separated ones.
    backing = event.converted_backing or event.keys.backing_vocals
    if backing:
        stems[BACKING_VOCALS] = fetch(ctx, backing, "backing_vocals.flac")
    return mix_track(stems, event.options.mix, event.options.output, local_track, ctx.progress)


def stage_timings(
    history: list[StageRecord], converted_at: datetime, finished_at: datetime
) -> dict[str, float]:
    """Seconds per stage, plus the mixer's wait in the queue and the job's total.

    ``mixer_queue`` runs from the ``vocals.converted`` event to the mixer starting (broker lag or
    a busy worker); ``total`` from the first stage's start (or that event) to now.
    """
    timings: dict[str, float] = {}
    for record in history:
        seconds = (record.finished_at - record.started_at).total_seconds()
        # A stage that ran more than once (a retry after a crash) adds up its runs.
        timings[record.stage] = round(timings.get(record.stage, 0.0) + seconds, 3)
    mixer_start = next((r.started_at for r in reversed(history) if r.stage == STAGE), None)
    if mixer_start is not None:
        timings["mixer_queue"] = round(max(0.0, (mixer_start - converted_at).total_seconds()), 3)
    first_start = min((r.started_at for r in history), default=converted_at)
    timings["total"] = round((finished_at - min(first_start, converted_at)).total_seconds(), 3)
    return timings
