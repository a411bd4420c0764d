"""``vocals.separated`` → ``voice.trained``: resolve the job's voice.

- A named model (``options.voice.model_key`` [+ ``index_key``]) is checked and passed on.
- A dataset (``options.voice.dataset_key``, an S3 prefix) is hashed with the training config;
  a model stored under that hash is reused at once; only a miss trains, under the output's lock
  (:func:`streams.outputs.produce`) so that concurrent jobs for the same voice train it once.
"""

from __future__ import annotations

from pathlib import Path

from agents.trainer.stage import (
    INDEX_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    VoiceKind,
    VoiceParams,
    VoiceTrainingConfig,
    train_voice,
    voice_kind,
)
from foundation.errors import StageError
from foundation.logging import get_logger
from schemas.events import VocalsSeparated, VoiceTrained
from streams.keypolicy import confined
from streams.keys import VOICES, sha256_file, voice_key
from streams.outputs import Output, OutputFile, Produced, plan_output, produce
from streams.stage import StageContext, fetch

log = get_logger(__name__)


def training_config(event: VocalsSeparated, ctx: StageContext) -> VoiceTrainingConfig:
    return VoiceTrainingConfig.from_options(
        event.options.voice, model_size=ctx.settings.trainer.model_size
    )


def handle(event: VocalsSeparated, ctx: StageContext) -> VoiceTrained:
    voice = event.options.voice
    if voice.model_key:
        return _named_model(event, ctx)
    if voice.dataset_key:
        return _from_dataset(event, ctx)
    raise StageError("no_voice", "the job names neither options.voice.dataset_key nor model_key")


def _named_model(event: VocalsSeparated, ctx: StageContext) -> VoiceTrained:
    from agents.voice.world import VoiceProfile, is_profile_file

    voice = event.options.voice
    assert voice.model_key
    model = fetch(ctx, voice.model_key, "model" + Path(voice.model_key).suffix)
    if is_profile_file(model):
        VoiceProfile.load(model)  # raises on a damaged profile
        kind = "world"
    else:
        kind = "rvc"
        _check_rvc_model(
            model, fetch(ctx, voice.index_key, "model.index") if voice.index_key else None
        )
    keys = event.keys.model_copy(
        update={"voice_model": voice.model_key, "voice_index": voice.index_key}
    )
    return event.follow(VoiceTrained, keys=keys, voice_kind=kind, cache_hit=True)


def _check_rvc_model(model: Path, index: Path | None) -> None:
    """Refuse a model that needs pickled code, is not an RVC model, or does not fit its index."""
    from agents.voice.checkpoint import load_voice_model

    voice_model = load_voice_model(model, "cpu")
    if index is not None:
        from agents.voice.index import load_index

        faiss_index, _ = load_index(index)
        if faiss_index.d != voice_model.phone_dim:
            raise StageError(
                "model_mismatch",
                f"the index holds {faiss_index.d}-d features but the model reads "
                f"{voice_model.phone_dim}-d ({voice_model.version})",
            )


def _dataset_files(event: VocalsSeparated, ctx: StageContext) -> list[Path]:
    from streams.client import AUDIO_SUFFIXES

    prefix = event.options.voice.dataset_key or ""
    keys = [k for k in ctx.store.list(prefix) if Path(k).suffix.lower() in AUDIO_SUFFIXES]
    if not keys:
        raise StageError("dataset_empty", f"no audio files under s3 prefix {prefix!r}")
    audio = ctx.settings.audio
    if len(keys) > audio.max_dataset_files:
        raise StageError(
            "dataset_too_large",
            f"{len(keys)} files in the dataset; the limit is {audio.max_dataset_files} "
            "(SINGTOME_MAX_DATASET_FILES)",
        )
    total = sum(ctx.store.size(k) for k in keys)
    if total > audio.max_dataset_bytes:
        raise StageError(
            "dataset_too_large",
            f"the dataset has {total} bytes; the limit is {audio.max_dataset_bytes} "
            "(SINGTOME_MAX_DATASET_BYTES)",
        )
    folder = ctx.workdir / "dataset"
    # A listed key maps to a path below the dataset folder, never beside or above it.
    return [
        ctx.store.get_file(k, confined(folder, k[len(prefix) :].lstrip("/") or Path(k).name))
        for k in keys
    ]


def voice_files(kind: VoiceKind) -> dict[str, OutputFile]:
    """The files of a trained voice, by role: a WORLD profile, or an RVC model and its index."""
    if kind == "world":
        return {"model": OutputFile(PROFILE_FILE)}
    return {"model": OutputFile(MODEL_FILE), "index": OutputFile(INDEX_FILE)}


def voice_output(files: list[Path], config: VoiceTrainingConfig, ctx: StageContext) -> Output:
    kind = voice_kind(ctx.settings.models)
    # Sorted: the same recordings under other names or in another order are the same voice.
    hashes = sorted(sha256_file(p) for p in files)
    return plan_output(
        VOICES,
        hashes,
        VoiceParams.of(config, kind, ctx.settings.models.rmvpe_path),
        ctx.settings.runtime.code_version,
        voice_files(kind),
    )


def voice_digest(files: list[Path], config: VoiceTrainingConfig, ctx: StageContext) -> str:
    return voice_output(files, config, ctx).digest


def voice_keys(digest: str, kind: VoiceKind) -> dict[str, str]:
    return {role: voice_key(digest, file.name) for role, file in voice_files(kind).items()}


def _from_dataset(event: VocalsSeparated, ctx: StageContext) -> VoiceTrained:
    files = _dataset_files(event, ctx)
    config = training_config(event, ctx)
    kind = voice_kind(ctx.settings.models)
    output = voice_output(files, config, ctx)

    def compute() -> Produced:
        trained = train_voice(
            files,
            ctx.workdir / "voice",
            config,
            ctx.settings.trainer,
            ctx.progress,
            models=ctx.settings.models,
            audio=ctx.settings.audio,
        )
        if trained.skipped:
            trained.metrics["skipped_files"] = float(len(trained.skipped))
        return Produced(trained.files, {"metrics": trained.metrics})

    # Under the output's lock: concurrent jobs for the same voice train it once.
    stored = produce(
        ctx, output, compute, single_flight=True,
        waiting="waiting for another worker training the same voice",
    )  # fmt: skip
    metrics: dict[str, float] = dict(stored.info.get("metrics") or {})
    log.info("voice ready", voice_kind=kind, cache_hit=stored.cache_hit, voice=output.digest[:12])
    out_keys = event.keys.model_copy(
        update={"voice_model": stored.keys["model"], "voice_index": stored.keys.get("index")}
    )
    return event.follow(
        VoiceTrained, keys=out_keys, voice_kind=kind, cache_hit=stored.cache_hit, metrics=metrics
    )
