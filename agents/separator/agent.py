"""The separator agent: ``song.uploaded`` in, ``vocals.separated`` out (the runner does Kafka).

Stems are an output of :mod:`streams.outputs`: keyed by the song's bytes, the separation
parameters and the code version, with the manifest written last beside them. When all of those
exist the stems are reused without running a model, so a redelivered or replayed event costs one
hash.
"""

from __future__ import annotations

from pathlib import Path

from agents.separator.stage import SeparationParams, StemsParams, separate
from foundation.errors import StageError
from foundation.logging import get_logger
from schemas.events import SongUploaded, VocalsSeparated
from streams.keys import STEMS, sha256_file
from streams.outputs import Output, OutputFile, Produced, plan_output, produce
from streams.stage import StageContext, fetch
from streams.store import ObjectNotFound

log = get_logger(__name__)

STAGE = "separator"


def stems_output(song: Path, params: SeparationParams, ctx: StageContext) -> Output:
    files = {name: OutputFile(f"{name}.flac", "audio/flac") for name in params.stem_names}
    return plan_output(
        STEMS,
        [sha256_file(song)],
        StemsParams.of(params, ctx.settings.separator, ctx.settings.audio),
        ctx.settings.runtime.code_version,
        files,
    )


def stems_digest(song: Path, params: SeparationParams, ctx: StageContext) -> str:
    return stems_output(song, params, ctx).digest


def _refuse_oversized(ctx: StageContext, song_key: str) -> None:
    """Refuse a too-large upload from its stored size, before downloading it."""
    if not song_key:
        return  # fetch() reports the missing key
    try:
        size = ctx.store.size(song_key)
    except ObjectNotFound:
        raise StageError("missing_object", f"object not found: {song_key}") from None
    limit = ctx.settings.audio.max_audio_bytes
    if size > limit:
        raise StageError(
            "audio_too_large",
            f"{song_key}: {size / 1e6:.1f} MB is over the limit of "
            f"{limit / 1e6:.1f} MB (SINGTOME_MAX_AUDIO_BYTES)",
        )


def handle(event: SongUploaded, ctx: StageContext) -> VocalsSeparated:
    params = SeparationParams.from_options(event.options.separator, ctx.settings.separator)
    song_key = event.keys.song or ""
    _refuse_oversized(ctx, song_key)
    song = fetch(ctx, song_key, "song" + Path(song_key).suffix.lower())
    output = stems_output(song, params, ctx)

    def compute() -> Produced:
        result = separate(
            song,
            ctx.workdir / "stems",
            params,
            ctx.settings.separator,
            ctx.progress,
            models=ctx.settings.models,
            audio=ctx.settings.audio,
        )
        log.info("stems separated", model=result.model, duration_s=result.duration_s)
        info = {
            "sample_rate": result.sample_rate,
            "duration_s": result.duration_s,
            "model": result.model,
        }
        return Produced({name: result.stems[name] for name in output.files}, info)

    stored = produce(ctx, output, compute)
    keys, info = stored.keys, stored.info

    return event.follow(
        VocalsSeparated,
        keys=event.keys.model_copy(
            update={
                "vocals": keys["vocals"],
                "accompaniment": keys["accompaniment"],
                "backing_vocals": keys.get("backing_vocals"),
            }
        ),
        sample_rate=int(info["sample_rate"]),
        duration_s=float(info["duration_s"]),
        separator_model=str(info["model"]),
        cache_hit=stored.cache_hit,
    )
