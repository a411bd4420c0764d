"""The converter's event handler: ``voice.trained`` in, ``vocals.converted`` out (no Kafka here).

The output key is a hash of the vocals' bytes, the voice model's (and index's) bytes, the
conversion parameters and the code version, so a redelivered or replayed event finds the
converted vocals already stored and answers at once (``cache_hit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import soundfile as sf

from agents.converter.stage import ConversionResult, convert_vocals, measure_quality, pitch_method
from foundation.errors import StageError
from foundation.logging import get_logger
from schemas.events import ConversionOptions, ConversionQuality, VocalsConverted, VoiceTrained
from streams.keys import (
    content_digest,
    conversion_quality_key,
    converted_backing_key,
    converted_key,
    sha256_file,
)
from streams.settings import Settings
from streams.stage import StageContext, all_exist, fetch
from streams.store import get_json, put_json

log = get_logger(__name__)

STAGE = "converter"
KIND = "converted"


def _suffix(key: str, default: str) -> str:
    return Path(key).suffix or default


def _file_identity(path: Path | None) -> str | None:
    # Configured checkpoints are large; name and size tell versions apart without hashing them.
    if path is None:
        return None
    try:
        return f"{path.name}:{path.stat().st_size}"
    except OSError:
        return path.name


def conversion_params(event: VoiceTrained, settings: Settings) -> dict[str, Any]:
    """Everything besides the input files that decides the converted audio."""
    params: dict[str, Any] = {
        "options": event.options.conversion.model_dump(mode="json"),
        "backend": event.voice_kind,
        "sample_rate": settings.stem_sample_rate,
    }
    if event.voice_kind == "rvc":
        params["content_encoder"] = _file_identity(settings.hubert_path)
        params["f0_method"] = pitch_method(event.options.conversion, settings)
        if params["f0_method"] == "rmvpe":
            params["rmvpe"] = _file_identity(settings.rmvpe_path)
    return params


# The voice dataset the similarity is measured against: at most this many of its files.
QUALITY_DATASET_FILES = 20


def handle(event: VoiceTrained, ctx: StageContext) -> VocalsConverted:
    keys = event.keys
    if not keys.voice_model:
        raise StageError("missing_object", "the event names no voice model (keys.voice_model)")
    vocals = fetch(ctx, keys.vocals, "vocals" + _suffix(keys.vocals or "", ".flac"))
    world_voice = event.voice_kind == "world"
    model = fetch(ctx, keys.voice_model, "profile.npz" if world_voice else "model.pth")
    index = (
        fetch(ctx, keys.voice_index, "model.index")
        if keys.voice_index and not world_voice
        else None
    )
    conversion = event.options.conversion
    backing = (
        fetch(ctx, keys.backing_vocals, "backing" + _suffix(keys.backing_vocals or "", ".flac"))
        if conversion.backing and keys.backing_vocals
        else None
    )

    digest = content_digest(
        [
            sha256_file(vocals),
            sha256_file(model),
            sha256_file(index) if index else "",
            *([sha256_file(backing)] if backing else []),
        ],
        conversion_params(event, ctx.settings),
        ctx.settings.code_version,
        KIND,
    )
    key = converted_key(digest)
    backing_key = converted_backing_key(digest) if backing else None
    quality_key = conversion_quality_key(digest)
    local = ctx.workdir / "converted_vocals.flac"

    cache_hit = all_exist(ctx, [key, quality_key] + ([backing_key] if backing_key else []))
    if cache_hit:
        log.info("vocals already converted; reusing them", converted_key=key)
        ctx.store.get_file(key, local)
        info = sf.info(str(local))
        backend, sample_rate, duration_s = event.voice_kind, int(info.samplerate), info.duration
        quality = ConversionQuality.model_validate(get_json(ctx.store, quality_key))
        ctx.progress(1.0, "vocals already converted")
    else:
        voice_files = [model] if index is None else [model, index]
        share = 0.6 if backing else 0.8
        result = convert_vocals(
            vocals,
            voice_files,
            conversion,
            ctx.settings,
            lambda f, m: ctx.progress(share * f, m),
            out_path=local,
        )
        ctx.store.put_file(key, result.path, "audio/flac")
        if backing is not None and backing_key is not None:
            _convert_backing(ctx, backing, voice_files, conversion, result, backing_key)
        ctx.progress(0.85, "measuring the conversion's quality")
        quality = measure_quality(
            vocals, result, _dataset_sample(event, ctx), backing_converted=backing is not None
        )
        put_json(ctx.store, quality_key, quality.model_dump(mode="json"))
        backend, sample_rate, duration_s = result.backend, result.sample_rate, result.duration_s

    return event.follow(
        VocalsConverted,
        keys=keys.model_copy(update={"converted_vocals": key}),
        backend=backend,
        sample_rate=sample_rate,
        duration_s=duration_s,
        cache_hit=cache_hit,
        converted_backing=backing_key,
        quality=quality,
    )


def _convert_backing(
    ctx: StageContext,
    backing: Path,
    voice_files: list[Path],
    params: ConversionOptions,
    lead: ConversionResult,
    backing_key: str,
) -> None:
    """The backing vocals in the same voice, at exactly the lead's key (no octave of their own:
    the harmony must stay where it was relative to the lead). A silent backing stem (a song
    without backing vocals) is stored as it is."""
    try:
        result = convert_vocals(
            backing,
            voice_files,
            params,
            ctx.settings,
            lambda f, m: ctx.progress(0.6 + 0.2 * f, f"backing vocals: {m}"),
            out_path=ctx.workdir / "converted_backing.flac",
            key=lead.semitones,
        )
    except StageError as exc:
        if exc.code != "silent_audio":
            raise
        log.info("backing vocals are silent; kept as they are", converted_backing_key=backing_key)
        ctx.store.put_file(backing_key, backing, "audio/flac")
        return
    ctx.store.put_file(backing_key, result.path, "audio/flac")


def _dataset_sample(event: VoiceTrained, ctx: StageContext) -> list[Path]:
    """Up to :data:`QUALITY_DATASET_FILES` of the voice dataset's recordings (none when the
    job named a ready model), to measure speaker similarity against."""
    from streams.client import AUDIO_SUFFIXES

    prefix = event.options.voice.dataset_key
    if not prefix:
        return []
    keys = sorted(k for k in ctx.store.list(prefix) if Path(k).suffix.lower() in AUDIO_SUFFIXES)
    folder = ctx.workdir / "dataset"
    return [
        ctx.store.get_file(k, folder / f"{n:03d}{Path(k).suffix.lower()}")
        for n, k in enumerate(keys[:QUALITY_DATASET_FILES])
    ]
