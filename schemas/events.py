"""Event models, one per topic.

Every event shares one envelope: ``schema_version``, ``event_id``, ``job_id``, ``occurred_at``, the
job's ``options`` (set once by the producer of ``song.uploaded`` and carried unchanged), the S3
``keys`` produced so far, and a ``history`` of the stages already done (for per-stage timings).
Events carry object keys, never audio bytes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = "1.0"
SUPPORTED_MAJOR = 1


# The pitch methods (agents/voice/f0). 'rmvpe' needs SINGTOME_RMVPE_PATH; without it the workers
# use 'fcpe', whose weights ship with its package.
F0Method = Literal["rmvpe", "harvest", "dio", "pm", "crepe", "crepe-tiny", "fcpe"]


def _new_event_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    # Producers in other languages may add fields we do not know yet (minor versions): keep them
    # out of the way rather than rejecting the event.
    model_config = ConfigDict(extra="ignore", frozen=False)


# --------------------------------------------------------------------------------------------------
# Job options: what the person asked for. Defaults are the product's defaults.
# --------------------------------------------------------------------------------------------------


class SeparatorOptions(_Model):
    model: str | None = Field(
        None,
        description="Separation model: 'spleeter' (bundled) or a UVR model file name in the model "
        "directory, e.g. 'UVR-MDX-NET-Inst_HQ_3.onnx'. None: the worker's default.",
    )
    skip: bool = Field(
        False, description="A cappella input: use the song as the vocal stem, silent accompaniment."
    )
    denoise_model: str | None = Field(None, description="Optional de-noise model for the vocals.")
    dereverb_model: str | None = Field(None, description="Optional de-reverb/de-echo model.")
    karaoke_model: str | None = Field(
        None, description="Optional lead/backing split of the vocals; backing stored as a stem."
    )


class VoiceOptions(_Model):
    dataset_key: str | None = Field(
        None, description="S3 prefix holding the person's voice recordings (any common format)."
    )
    model_key: str | None = Field(
        None, description="S3 key of an existing RVC model (.pth), instead of a dataset."
    )
    index_key: str | None = Field(None, description="S3 key of the model's .index (optional).")
    sample_rate: Literal["32k", "40k", "48k"] = "40k"
    f0_method: F0Method = "rmvpe"
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(4, ge=1, le=256)

    @field_validator("index_key")
    @classmethod
    def _index_needs_model(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not info.data.get("model_key"):
            raise ValueError("index_key given without model_key")
        return value


class ConversionOptions(_Model):
    f0_up_key: int = Field(0, ge=-24, le=24, description="Transpose in semitones.")
    f0_method: F0Method = "rmvpe"
    index_rate: float = Field(0.75, ge=0.0, le=1.0)
    filter_radius: int = Field(3, ge=0, le=7)
    rms_mix_rate: float = Field(0.25, ge=0.0, le=1.0)
    protect: float = Field(0.33, ge=0.0, le=0.5)
    unvoiced_f0: Literal["keep", "interpolate"] = Field(
        "keep",
        description="RVC path, frames without pitch: 'keep' them unvoiced (RVC's classic "
        "pipeline, rvc 0.3.5: breaths and consonants stay noise and 'protect' keeps them "
        "intelligible) or 'interpolate' a pitch through them (RVC WebUI's current pipeline: "
        "notes the tracker drops are sung through; 'protect' then has no effect).",
    )
    backing: bool = Field(
        False,
        description="Also convert the backing-vocal stem (keys.backing_vocals, from the "
        "separator's karaoke model) with the same voice and key; the mixer then uses it.",
    )


class ConversionQuality(_Model):
    """How well the conversion went (see agents/voice/quality.py for how each is measured)."""

    speaker_similarity: float | None = Field(
        None,
        description="Speaker similarity (Resemblyzer, cosine) of the converted vocals to "
        "the voice dataset; None when the job named a model, not a dataset.",
    )
    source_similarity: float | None = Field(
        None, description="The same for the source vocals: what the conversion started from."
    )
    f0_error_cents: float | None = Field(
        None,
        description="Median |cents| between the converted vocals' pitch and the source's "
        "shifted by key_semitones, over frames voiced in both.",
    )
    voiced_kept: float | None = Field(
        None, description="Share of the source's sung (voiced) frames still voiced."
    )
    key_semitones: int = Field(0, description="Transpose applied to the vocals.")
    key_method: Literal["requested", "auto_octave"] = Field(
        "requested",
        description="'requested': f0_up_key as given; 'auto_octave': f0_up_key "
        "plus the octaves that put the vocals' median pitch nearest the voice's (WORLD voice).",
    )
    backing_converted: bool = False


class MixOptions(_Model):
    vocals_gain_db: float = -4.0
    backing_gain_db: float = -6.0
    accompaniment_gain_db: float = -7.0
    effects: bool = Field(True, description="High-pass, compressor and light reverb on the vocals.")
    reverb_wet: float = Field(0.12, ge=0.0, le=1.0)
    key_shift: int = Field(
        0, ge=-12, le=12, description="Semitones to shift the accompaniment and backing vocals."
    )
    target_lufs: float = Field(-14.0, ge=-40.0, le=-5.0)
    true_peak_db: float = Field(-1.0, ge=-9.0, le=0.0)


class OutputOptions(_Model):
    format: Literal["wav", "flac", "mp3", "m4a"] = "mp3"
    bitrate: str = Field("192k", pattern=r"^\d{2,3}k$")
    title: str | None = None
    artist: str | None = None


class JobOptions(_Model):
    separator: SeparatorOptions = Field(default_factory=SeparatorOptions)
    voice: VoiceOptions = Field(default_factory=VoiceOptions)
    conversion: ConversionOptions = Field(default_factory=ConversionOptions)
    mix: MixOptions = Field(default_factory=MixOptions)
    output: OutputOptions = Field(default_factory=OutputOptions)
    force: bool = Field(
        False, description="Recompute every stage even when its output already exists."
    )


class ObjectKeys(_Model):
    """S3 keys produced so far for the job (bucket-relative)."""

    song: str | None = None
    vocals: str | None = None
    accompaniment: str | None = None
    backing_vocals: str | None = None
    voice_model: str | None = None
    voice_index: str | None = None
    converted_vocals: str | None = None
    track: str | None = None


class StageRecord(_Model):
    stage: str
    started_at: datetime
    finished_at: datetime
    cache_hit: bool = False


# --------------------------------------------------------------------------------------------------
# The envelope and the events.
# --------------------------------------------------------------------------------------------------


E = TypeVar("E", bound="Event")


class Event(_Model):
    topic: ClassVar[str] = ""

    schema_version: str = Field(SCHEMA_VERSION, pattern=r"^\d+\.\d+$")
    event_id: str = Field(default_factory=_new_event_id, min_length=1)
    job_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
    occurred_at: datetime = Field(default_factory=_now)
    options: JobOptions = Field(default_factory=JobOptions)
    keys: ObjectKeys = Field(default_factory=ObjectKeys)
    history: list[StageRecord] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _known_major(cls, value: str) -> str:
        major = int(value.split(".", 1)[0])
        if major != SUPPORTED_MAJOR:
            raise ValueError(
                f"unsupported schema_version {value!r}: this service reads {SUPPORTED_MAJOR}.x"
            )
        return value

    def follow(self, cls: type[E], **fields: Any) -> E:
        """The next event of the same job: envelope carried over, new id and timestamp."""
        base = self.model_dump(exclude={"event_id", "occurred_at", "schema_version"})
        base.update(fields)
        return cls.model_validate(base)


class SongUploaded(Event):
    topic: ClassVar[str] = "song.uploaded"

    @field_validator("keys")
    @classmethod
    def _needs_song(cls, keys: ObjectKeys) -> ObjectKeys:
        if not keys.song:
            raise ValueError("keys.song is required: the S3 key of the uploaded song")
        return keys


class VocalsSeparated(Event):
    topic: ClassVar[str] = "vocals.separated"
    sample_rate: int
    duration_s: float
    separator_model: str
    cache_hit: bool = False


class VoiceTrained(Event):
    topic: ClassVar[str] = "voice.trained"
    voice_kind: Literal["rvc", "world"] = Field(
        description="'rvc': an RVC model; 'world': the no-weights WORLD fallback voice profile."
    )
    cache_hit: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)


class VocalsConverted(Event):
    topic: ClassVar[str] = "vocals.converted"
    backend: Literal["rvc", "world"]
    sample_rate: int
    duration_s: float
    cache_hit: bool = False
    converted_backing: str | None = Field(
        None, description="S3 key of the converted backing vocals (options.conversion.backing)."
    )
    quality: ConversionQuality | None = None


class TrackReady(Event):
    topic: ClassVar[str] = "track.ready"
    track_key: str
    format: str
    duration_s: float
    loudness_lufs: float | None = None
    download_url: str | None = None
    url_expires_at: datetime | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    cache_hit: bool = False
    quality: ConversionQuality | None = Field(
        None, description="The conversion's quality report, as vocals.converted gave it."
    )


class TrackFailed(Event):
    topic: ClassVar[str] = "track.failed"
    stage: str
    code: str = Field(description="Stable machine-readable error code, see docs/reliability.md.")
    message: str = Field(description="What went wrong, for a person.")
    retriable: bool
    attempt: int = 1
    source_topic: str
    source_event_id: str | None = None


class JobProgress(Event):
    topic: ClassVar[str] = "job.progress"
    stage: str
    fraction: float = Field(ge=0.0, le=1.0)
    message: str = ""


# A failure about an event we could not parse still needs a job id: this one marks it.
UNKNOWN_JOB = "unknown"

EVENT_TYPES: tuple[type[Event], ...] = (
    SongUploaded,
    VocalsSeparated,
    VoiceTrained,
    VocalsConverted,
    TrackReady,
    TrackFailed,
    JobProgress,
)
BY_TOPIC: dict[str, type[Event]] = {cls.topic: cls for cls in EVENT_TYPES}


class EventDecodeError(ValueError):
    """An event that cannot be read; ``code`` says why and ``message`` names the field."""

    def __init__(self, code: str, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(event)"


def decode(cls: type[E], payload: bytes | str | dict[str, Any]) -> E:
    """Parse and validate one event, raising :class:`EventDecodeError` with a clear message."""
    import json

    data: Any = payload
    if isinstance(payload, (bytes, str)):
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventDecodeError("malformed_event", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventDecodeError("malformed_event", "an event must be a JSON object")
    job_id = data.get("job_id") if isinstance(data.get("job_id"), str) else None
    version = data.get("schema_version")
    major = version.split(".", 1)[0] if isinstance(version, str) else ""
    if major.isdigit() and int(major) != SUPPORTED_MAJOR:
        raise EventDecodeError(
            "unsupported_schema_version",
            f"schema_version {version!r} is not supported: this service reads {SUPPORTED_MAJOR}.x",
            job_id,
        )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_field_path(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise EventDecodeError(
            "malformed_event", f"invalid {cls.topic} event: {problems}", job_id
        ) from None


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()
