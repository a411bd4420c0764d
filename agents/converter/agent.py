"""The converter's event handler: ``voice.trained`` in, ``vocals.converted`` out (no Kafka here).

The converted vocals are an output of :mod:`streams.outputs`: keyed by the vocals' bytes, the
voice model's (and index's) bytes, the conversion parameters and the code version, so a
redelivered or replayed event finds them already stored and answers at once (``cache_hit``). The
voice's kind is the event's (``voice_kind``, decided by the trainer): it names the files, the
parameters and the backend that runs.
"""

from __future__ import annotations

from pathlib import Path

from agents.converter.stage import (
    ConversionParams,
    ConversionResult,
    VoiceFiles,
    convert_vocals,
    measure_quality,
)
from foundation.errors import StageError
from foundation.logging import get_logger
from schemas.events import ConversionOptions, ConversionQuality, VocalsConverted, VoiceTrained
from streams.keys import CONVERTED, sha256_file
from streams.outputs import Output, OutputFile, Produced, plan_output, produce
from streams.stage import StageContext, fetch

log = get_logger(__name__)

STAGE = "converter"

# The files of the converted output, by role.
VOCALS_FILE = OutputFile("vocals.flac", "audio/flac")
BACKING_FILE = OutputFile("backing.flac", "audio/flac")


def _suffix(key: str, default: str) -> str:
    return Path(key).suffix or default


# The voice dataset the similarity is measured against: at most this many of its files.
QUALITY_DATASET_FILES = 20


def converted_output(
    vocals: Path, voice: VoiceFiles, backing: Path | None, event: VoiceTrained, ctx: StageContext
) -> Output:
    inputs = [
        sha256_file(vocals),
        sha256_file(voice.model),
        sha256_file(voice.index) if voice.index else "",
        *([sha256_file(backing)] if backing else []),
    ]
    files = {"vocals": VOCALS_FILE, **({"backing": BACKING_FILE} if backing else {})}
    settings = ctx.settings
    params = ConversionParams.of(
        event.options.conversion, voice.backend, settings.models, settings.audio
    )
    return plan_output(CONVERTED, inputs, params, settings.runtime.code_version, files)


def handle(event: VoiceTrained, ctx: StageContext) -> VocalsConverted:
    keys = event.keys
    if not keys.voice_model:
        raise StageError("missing_object", "the event names no voice model (keys.voice_model)")
    vocals = fetch(ctx, keys.vocals, "vocals" + _suffix(keys.vocals or "", ".flac"))
    world_voice = event.voice_kind == "world"
    voice = VoiceFiles(
        fetch(ctx, keys.voice_model, "profile.npz" if world_voice else "model.pth"),
        fetch(ctx, keys.voice_index, "model.index")
        if keys.voice_index and not world_voice
        else None,
        event.voice_kind,
    )
    conversion = event.options.conversion
    backing = (
        fetch(ctx, keys.backing_vocals, "backing" + _suffix(keys.backing_vocals or "", ".flac"))
        if conversion.backing and keys.backing_vocals
        else None
    )
    output = converted_output(vocals, voice, backing, event, ctx)

    def compute() -> Produced:
        share = 0.6 if backing else 0.8
        result = convert_vocals(
            vocals,
            voice,
            conversion,
            ctx.settings.converter,
            lambda f, m: ctx.progress(share * f, m),
            out_path=ctx.workdir / "converted_vocals.flac",
            models=ctx.settings.models,
            audio=ctx.settings.audio,
        )
        files = {"vocals": result.path}
        if backing is not None:
            files["backing"] = _convert_backing(ctx, backing, voice, conversion, result)
        ctx.progress(0.85, "measuring the conversion's quality")
        quality = measure_quality(
            vocals, result, _dataset_sample(event, ctx), backing_converted=backing is not None
        )
        info = {
            "backend": result.backend,
            "sample_rate": result.sample_rate,
            "duration_s": result.duration_s,
            "quality": quality.model_dump(mode="json"),
        }
        return Produced(files, info)

    stored = produce(ctx, output, compute)
    info = stored.info
    if stored.cache_hit:
        log.info("vocals already converted; reusing them", converted_key=stored.keys["vocals"])
        ctx.progress(1.0, "vocals already converted")

    return event.follow(
        VocalsConverted,
        keys=keys.model_copy(update={"converted_vocals": stored.keys["vocals"]}),
        backend=info["backend"],
        sample_rate=int(info["sample_rate"]),
        duration_s=float(info["duration_s"]),
        cache_hit=stored.cache_hit,
        converted_backing=stored.keys.get("backing"),
        quality=ConversionQuality.model_validate(info["quality"]),
    )


def _convert_backing(
    ctx: StageContext,
    backing: Path,
    voice: VoiceFiles,
    params: ConversionOptions,
    lead: ConversionResult,
) -> Path:
    """The backing vocals in the same voice, at exactly the lead's key (no octave of their own:
    the harmony must stay where it was relative to the lead). A silent backing stem (a song
    without backing vocals) is kept as it is."""
    try:
        result = convert_vocals(
            backing,
            voice,
            params,
            ctx.settings.converter,
            lambda f, m: ctx.progress(0.6 + 0.2 * f, f"backing vocals: {m}"),
            out_path=ctx.workdir / "converted_backing.flac",
            key=lead.semitones,
            models=ctx.settings.models,
            audio=ctx.settings.audio,
        )
    except StageError as exc:
        if exc.code != "silent_audio":
            raise
        log.info("backing vocals are silent; kept as they are")
        return backing
    return result.path


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
