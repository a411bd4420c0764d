"""``vocals.separated`` → ``voice.trained``: resolve the job's voice.

- A named model (``options.voice.model_key`` [+ ``index_key``]) is checked and passed on.
- A dataset (``options.voice.dataset_key``, an S3 prefix) is hashed with the training config;
  a model stored under that hash is reused at once; only a miss trains, under a lock object so
  that concurrent jobs for the same voice train it once.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from agents.trainer.stage import (
    INDEX_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    TrainedVoice,
    VoiceTrainingConfig,
    train_voice,
    voice_kind,
)
from foundation.errors import StageError
from foundation.logging import get_logger
from schemas.events import VocalsSeparated, VoiceTrained
from streams import keys as keylayout
from streams.keypolicy import confined
from streams.stage import StageContext, all_exist, fetch

log = get_logger(__name__)

LOCK_POLL_S = 2.0


def training_config(event: VocalsSeparated, ctx: StageContext) -> VoiceTrainingConfig:
    voice = event.options.voice
    return VoiceTrainingConfig(
        sample_rate=voice.sample_rate,
        f0_method=voice.f0_method,
        epochs=voice.epochs,
        batch_size=voice.batch_size,
        model_size=ctx.settings.train_model_size,
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
    settings = ctx.settings
    if len(keys) > settings.max_dataset_files:
        raise StageError(
            "dataset_too_large",
            f"{len(keys)} files in the dataset; the limit is {settings.max_dataset_files} "
            "(SINGTOME_MAX_DATASET_FILES)",
        )
    total = sum(ctx.store.size(k) for k in keys)
    if total > settings.max_dataset_bytes:
        raise StageError(
            "dataset_too_large",
            f"the dataset has {total} bytes; the limit is {settings.max_dataset_bytes} "
            "(SINGTOME_MAX_DATASET_BYTES)",
        )
    folder = ctx.workdir / "dataset"
    # A listed key maps to a path below the dataset folder, never beside or above it.
    return [
        ctx.store.get_file(k, confined(folder, k[len(prefix) :].lstrip("/") or Path(k).name))
        for k in keys
    ]


def voice_digest(files: list[Path], config: VoiceTrainingConfig, ctx: StageContext) -> str:
    kind = voice_kind(ctx.settings)
    hashes = sorted(keylayout.sha256_file(p) for p in files)
    return keylayout.content_digest(
        hashes,
        config.key_params(kind, ctx.settings.rmvpe_path),
        ctx.settings.code_version,
        "voices",
    )


def voice_keys(digest: str, kind: str) -> dict[str, str]:
    prefix = keylayout.voice_prefix(digest)
    if kind == "world":
        return {"model": prefix + PROFILE_FILE}
    return {"model": prefix + MODEL_FILE, "index": prefix + INDEX_FILE}


def _from_dataset(event: VocalsSeparated, ctx: StageContext) -> VoiceTrained:
    files = _dataset_files(event, ctx)
    config = training_config(event, ctx)
    kind = voice_kind(ctx.settings)
    digest = voice_digest(files, config, ctx)
    keys = voice_keys(digest, kind)
    metrics_key = keylayout.voice_prefix(digest) + "metrics.json"
    cache_hit = all_exist(ctx, list(keys.values()))
    if not cache_hit:
        cache_hit = _train_once(files, config, digest, keys, metrics_key, ctx)
    metrics: dict[str, float] = {}
    if ctx.store.exists(metrics_key):
        metrics = json.loads(ctx.store.get_bytes(metrics_key))
    log.info("voice ready", voice_kind=kind, cache_hit=cache_hit, voice=digest[:12])
    out_keys = event.keys.model_copy(
        update={"voice_model": keys["model"], "voice_index": keys.get("index")}
    )
    return event.follow(
        VoiceTrained, keys=out_keys, voice_kind=kind, cache_hit=cache_hit, metrics=metrics
    )


def _train_once(
    files: list[Path],
    config: VoiceTrainingConfig,
    digest: str,
    keys: dict[str, str],
    metrics_key: str,
    ctx: StageContext,
) -> bool:
    """Train under a lock; True when another worker finished the same voice meanwhile."""
    lock = keylayout.lock_key(f"voice-{digest}")
    owner = json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "at": datetime.now(UTC).isoformat()}
    ).encode()
    stale_after = ctx.settings.stage_timeout_s
    waited_since = time.monotonic()

    def stored() -> bool:
        return all(ctx.store.exists(key) for key in keys.values())

    while not ctx.store.put_if_absent(lock, owner):
        if stored():
            return True
        if time.monotonic() - waited_since > stale_after:
            log.warning("voice lock looks abandoned; taking it over", lock=lock)
            ctx.store.delete(lock)
            continue
        ctx.progress(0.0, "waiting for another worker training the same voice")
        time.sleep(LOCK_POLL_S)
    try:
        if not ctx.force and stored():  # finished between our check and the lock
            return True
        trained: TrainedVoice = train_voice(
            files, ctx.workdir / "voice", config, ctx.settings, ctx.progress
        )
        if trained.skipped:
            trained.metrics["skipped_files"] = float(len(trained.skipped))
        ctx.store.put_bytes(metrics_key, json.dumps(trained.metrics).encode(), "application/json")
        if "index" in keys:
            ctx.store.put_file(keys["index"], trained.files["index"])
        # The model last: its presence marks the voice complete.
        ctx.store.put_file(keys["model"], trained.files["model"])
        return False
    finally:
        ctx.store.delete(lock)
