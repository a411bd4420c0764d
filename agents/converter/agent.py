"""The converter's event handler: ``voice.trained`` in, ``vocals.converted`` out (no Kafka here).

The output key is a hash of the vocals' bytes, the voice model's (and index's) bytes, the
conversion parameters and the code version, so a redelivered or replayed event finds the
converted vocals already stored and answers at once (``cache_hit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import soundfile as sf

from agents.converter.stage import convert_vocals, pitch_method
from schemas.events import VocalsConverted, VoiceTrained
from streams.errors import StageError
from streams.keys import content_digest, converted_key, sha256_file
from streams.logging import get_logger
from streams.settings import Settings
from streams.stage import StageContext, all_exist, fetch

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

    digest = content_digest(
        [sha256_file(vocals), sha256_file(model), sha256_file(index) if index else ""],
        conversion_params(event, ctx.settings),
        ctx.settings.code_version,
        KIND,
    )
    key = converted_key(digest)
    local = ctx.workdir / "converted_vocals.flac"

    cache_hit = all_exist(ctx, [key])
    if cache_hit:
        log.info("vocals already converted; reusing them", converted_key=key)
        ctx.store.get_file(key, local)
        info = sf.info(str(local))
        backend, sample_rate, duration_s = event.voice_kind, int(info.samplerate), info.duration
        ctx.progress(1.0, "vocals already converted")
    else:
        voice_files = [model] if index is None else [model, index]
        result = convert_vocals(
            vocals,
            voice_files,
            event.options.conversion,
            ctx.settings,
            ctx.progress,
            out_path=local,
        )
        ctx.store.put_file(key, result.path, "audio/flac")
        backend, sample_rate, duration_s = result.backend, result.sample_rate, result.duration_s

    return event.follow(
        VocalsConverted,
        keys=keys.model_copy(update={"converted_vocals": key}),
        backend=backend,
        sample_rate=sample_rate,
        duration_s=duration_s,
        cache_hit=cache_hit,
    )
