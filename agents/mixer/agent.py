"""The mixer's event handler: ``vocals.converted`` in, ``track.ready`` out (no Kafka here).

The track is an output of :mod:`streams.outputs` like every other stage's: keyed by the stems'
bytes (converted vocals, accompaniment, backing vocals), the mix and output options and the code
version (``tracks/<digest>/cover.<format>``). A redelivered or duplicate ``vocals.converted``
finds the track and its manifest (duration, loudness) stored and is answered without mixing; a
replay after a code-version bump mixes a new track.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.mixer.stage import TrackParams, mix_track
from foundation.encode import content_type
from foundation.logging import get_logger
from schemas.events import StageRecord, TrackReady, VocalsConverted
from schemas.vocabulary import ACCOMPANIMENT, BACKING_VOCALS, VOCALS
from streams.keys import TRACKS, sha256_file
from streams.outputs import Output, OutputFile, Produced, plan_output, produce
from streams.stage import StageContext, fetch

log = get_logger(__name__)

STAGE = "mixer"
TRACK_NAME = "cover"


def track_output(stems: dict[str, Path], event: VocalsConverted, ctx: StageContext) -> Output:
    fmt = event.options.output.format
    # The stems in a fixed order of roles; a missing backing stem is its own case.
    inputs = [f"{role}:{sha256_file(stems[role])}" for role in sorted(stems)]
    params = TrackParams(mix=event.options.mix, output=event.options.output)
    files = {"track": OutputFile(f"{TRACK_NAME}.{fmt}", content_type(fmt))}
    return plan_output(TRACKS, inputs, params, ctx.settings.runtime.code_version, files)


def handle(event: VocalsConverted, ctx: StageContext) -> TrackReady:
    started_at = datetime.now(UTC)
    fmt = event.options.output.format
    stems = _stems(event, ctx)
    output = track_output(stems, event, ctx)

    def compute() -> Produced:
        local_track = ctx.workdir / f"{TRACK_NAME}.{fmt}"
        result = mix_track(
            stems, event.options.mix, event.options.output, local_track, ctx.progress
        )
        info = {"duration_s": result.duration_s, "loudness_lufs": result.loudness_lufs}
        return Produced({"track": result.path}, info)

    stored = produce(ctx, output, compute)
    key = stored.keys["track"]
    if stored.cache_hit:
        log.info("track already mixed; reusing it", track_key=key)
        ctx.progress(1.0, "track already mixed")

    expiry_s = ctx.settings.storage.presign_expiry_s
    signed_at = datetime.now(UTC)
    download_url = ctx.store.presign(key, expiry_s)
    finished_at = datetime.now(UTC)
    # The runner appends the mixer's StageRecord to the history; the timings need it now.
    mixer_run = StageRecord(
        stage=STAGE, started_at=started_at, finished_at=finished_at, cache_hit=stored.cache_hit
    )
    return event.follow(
        TrackReady,
        keys=event.keys.model_copy(update={"track": key}),
        track_key=key,
        format=fmt,
        duration_s=float(stored.info["duration_s"]),
        loudness_lufs=stored.info["loudness_lufs"],
        download_url=download_url,
        url_expires_at=signed_at + timedelta(seconds=expiry_s),
        timings_s=stage_timings([*event.history, mixer_run], event.occurred_at, finished_at),
        cache_hit=stored.cache_hit,
        quality=event.quality,
    )


def _stems(event: VocalsConverted, ctx: StageContext) -> dict[str, Path]:
    stems = {
        VOCALS: fetch(ctx, event.keys.converted_vocals, "converted_vocals.flac"),
        ACCOMPANIMENT: fetch(ctx, event.keys.accompaniment, "accompaniment.flac"),
    }
    # The converted backing vocals when the converter made them, else the separated ones.
    backing = event.converted_backing or event.keys.backing_vocals
    if backing:
        stems[BACKING_VOCALS] = fetch(ctx, backing, "backing_vocals.flac")
    return stems


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
