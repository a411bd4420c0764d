"""The separator agent: ``song.uploaded`` in, ``vocals.separated`` out (the runner does Kafka).

Stems are stored under keys derived from the song's bytes, the separation parameters and the code
version, with a small ``separation.json`` written last beside them. When all of those exist the
stems are reused without running a model, so a redelivered or replayed event costs one hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.separator.stage import SeparationParams, separate
from foundation.errors import StageError
from foundation.logging import get_logger
from schemas.events import SongUploaded, VocalsSeparated
from streams.keys import content_digest, sha256_file, stem_key, stems_prefix
from streams.stage import StageContext, all_exist, fetch
from streams.store import ObjectNotFound, get_json, put_json

log = get_logger(__name__)

STAGE = "separator"
DIGEST_KIND = "stems"
MANIFEST = "separation.json"


def manifest_key(digest: str) -> str:
    return f"{stems_prefix(digest)}{MANIFEST}"


def stems_digest(song: Path, params: SeparationParams, ctx: StageContext) -> str:
    return content_digest(
        [sha256_file(song)], params.digest_params(ctx.settings), ctx.settings.code_version,
        DIGEST_KIND,
    )  # fmt: skip


def _refuse_oversized(ctx: StageContext, song_key: str) -> None:
    """Refuse a too-large upload from its stored size, before downloading it."""
    if not song_key:
        return  # fetch() reports the missing key
    try:
        size = ctx.store.size(song_key)
    except ObjectNotFound:
        raise StageError("missing_object", f"object not found: {song_key}") from None
    if size > ctx.settings.max_audio_bytes:
        raise StageError(
            "audio_too_large",
            f"{song_key}: {size / 1e6:.1f} MB is over the limit of "
            f"{ctx.settings.max_audio_bytes / 1e6:.1f} MB (SINGTOME_MAX_AUDIO_BYTES)",
        )


def handle(event: SongUploaded, ctx: StageContext) -> VocalsSeparated:
    params = SeparationParams.from_options(event.options.separator, ctx.settings)
    song_key = event.keys.song or ""
    _refuse_oversized(ctx, song_key)
    song = fetch(ctx, song_key, "song" + Path(song_key).suffix.lower())
    digest = stems_digest(song, params, ctx)
    keys = {name: stem_key(digest, name) for name in params.stem_names}
    manifest = manifest_key(digest)

    cache_hit = all_exist(ctx, [*keys.values(), manifest])
    if cache_hit:
        info: dict[str, Any] = get_json(ctx.store, manifest)
        log.info("stems reused", digest=digest, model=info["model"])
    else:
        result = separate(song, ctx.workdir / "stems", params, ctx.settings, ctx.progress)
        for name, key in keys.items():
            ctx.store.put_file(key, result.stems[name], "audio/flac")
        info = {
            "sample_rate": result.sample_rate,
            "duration_s": result.duration_s,
            "model": result.model,
            "stems": keys,
        }
        # Written last: its presence says every stem above is complete.
        put_json(ctx.store, manifest, info)
        log.info("stems stored", digest=digest, model=result.model, duration_s=result.duration_s)

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
        cache_hit=cache_hit,
    )
