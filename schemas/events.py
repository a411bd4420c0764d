"""Event models, one per topic.

Every event shares one envelope: ``schema_version``, ``event_id``, ``job_id``, ``occurred_at``, the
job's ``options`` (set once by the producer of ``song.uploaded`` and carried unchanged), the S3
``keys`` produced so far, and a ``history`` of the stages already done (for per-stage timings).
Events carry object keys, never audio bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.vocabulary import (
    ACCOMPANIMENT,
    DEFAULT_F0_METHOD,
    VOCALS,
    F0Method,
    OutputFormat,
    SampleRate,
    VoiceKind,
)

SCHEMA_VERSION = "1.0"
SUPPORTED_MAJOR = 1
# ASCII digits, a bounded number of them (int() of a 5000-digit major would raise). Written as
# [0-9], never \d: \d also matches other scripts' digits in Python and in JSON Schema validators.
_VERSION_PART = "[0-9]{1,4}"
SCHEMA_VERSION_PATTERN = rf"^{_VERSION_PART}\.{_VERSION_PART}$"
# What the exported JSON Schema states: a version of the one major this service reads.
SUPPORTED_VERSION_PATTERN = rf"^{SUPPORTED_MAJOR}\.{_VERSION_PART}$"

# job_id and event_id: ASCII letters, digits, '.', '_' and '-', 1 to 128 characters, never
# starting with '.' (so never '.' or '..'). Such an id is safe as an S3 key segment, a file name,
# a Kafka key and a log field. One pattern, declared here, validates both.
ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
ID_MAX_CHARS = 128
_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a usable job_id / event_id (see :data:`ID_PATTERN`)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


JobId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        max_length=ID_MAX_CHARS,
        description="The job's id: ASCII letters, digits, '.', '_', '-'; 1-128 characters, "
        "not starting with '.'. Also the Kafka message key.",
    ),
]
EventId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        max_length=ID_MAX_CHARS,
        description="This event's id, same alphabet as job_id. A stage's answer carries an id "
        "derived from its input's id and the stage, so a replayed input is recognised as a "
        "duplicate at every stage.",
    ),
]

# Which S3 keys an event may name (enforced by every stage, see streams/keypolicy.py).
KEY_POLICY_DOC = (
    "Every S3 key an event names (keys.*, options.voice.dataset_key/model_key/index_key) is "
    "bucket-relative, in normal form (no leading '/', no scheme such as s3://, no '.' or '..' "
    "segment, no empty segment, no control character or backslash, at most 1024 UTF-8 bytes) and "
    "lies in a namespace the job may read: its own upload prefix (default uploads/<job_id>/, "
    "SINGTOME_UPLOAD_PREFIX), the content-addressed outputs the pipeline writes itself "
    "(stems/<sha256>/, voices/<sha256>/, converted/<sha256>/ and tracks/<sha256>/), or a shared "
    "voice-model prefix the operator configured (SINGTOME_SHARED_MODEL_PREFIXES). A key outside "
    "these is answered with track.failed code forbidden_key; a key that is not in normal form or "
    "that S3 refuses, with invalid_key. Neither is retriable."
)
# Marks a field that names an S3 key (read by the key policy; visible in the JSON Schema).
S3_KEY_MARK = "x-singtome-s3-key"
_S3_KEY_EXTRA: dict[str, Any] = {S3_KEY_MARK: True}


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


def _index_needs_model_schema(schema: dict[str, Any]) -> None:
    # The JSON Schema twin of _index_needs_model below: an index_key needs a model_key.
    schema["if"] = {"properties": {"index_key": {"type": "string"}}, "required": ["index_key"]}
    schema["then"] = {
        "properties": {"model_key": {"type": "string", "minLength": 1}},
        "required": ["model_key"],
    }


class VoiceOptions(_Model):
    model_config = ConfigDict(json_schema_extra=_index_needs_model_schema)

    dataset_key: str | None = Field(
        None,
        description="S3 prefix holding the person's voice recordings (any common format), "
        "normally under the job's own upload prefix.",
        json_schema_extra=_S3_KEY_EXTRA,
    )
    model_key: str | None = Field(
        None,
        description="S3 key of an existing RVC model (.pth), instead of a dataset: under the "
        "job's upload prefix, voices/<sha256>/ or a configured shared model prefix.",
        json_schema_extra=_S3_KEY_EXTRA,
    )
    index_key: str | None = Field(
        None,
        description="S3 key of the model's .index (optional).",
        json_schema_extra=_S3_KEY_EXTRA,
    )
    sample_rate: SampleRate = "40k"
    f0_method: F0Method = DEFAULT_F0_METHOD
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
    f0_method: F0Method = DEFAULT_F0_METHOD
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


# Stem gains the mix accepts (dB): from muted (-120) to the loudest a stem sensibly gets before the
# loudness stage brings the whole track to target_lufs (beyond them the float samples overflow).
GAIN_DB_RANGE = (-120.0, 24.0)


def _gain_field(default: float, stem: str) -> Any:
    low, high = GAIN_DB_RANGE
    return Field(default, ge=low, le=high, description=f"Gain of the {stem} in the mix (dB).")


class MixOptions(_Model):
    vocals_gain_db: float = _gain_field(-4.0, "converted vocals")
    backing_gain_db: float = _gain_field(-6.0, "backing vocals")
    accompaniment_gain_db: float = _gain_field(-7.0, "accompaniment")
    effects: bool = Field(True, description="High-pass, compressor and light reverb on the vocals.")
    reverb_wet: float = Field(0.12, ge=0.0, le=1.0)
    key_shift: int = Field(
        0, ge=-12, le=12, description="Semitones to shift the accompaniment and backing vocals."
    )
    target_lufs: float = Field(-14.0, ge=-40.0, le=-5.0)
    true_peak_db: float = Field(-1.0, ge=-9.0, le=0.0)


class OutputOptions(_Model):
    format: OutputFormat = "mp3"
    bitrate: str = Field("192k", pattern=r"^[0-9]{2,3}k$")
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


def _key_field() -> Any:
    return Field(None, json_schema_extra=_S3_KEY_EXTRA)


class ObjectKeys(_Model):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"description": KEY_POLICY_DOC})

    song: str | None = _key_field()
    vocals: str | None = _key_field()
    accompaniment: str | None = _key_field()
    backing_vocals: str | None = _key_field()
    voice_model: str | None = _key_field()
    voice_index: str | None = _key_field()
    converted_vocals: str | None = _key_field()
    track: str | None = _key_field()


class StageRecord(_Model):
    stage: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
    cache_hit: bool = False


# --------------------------------------------------------------------------------------------------
# The envelope and the events.
# --------------------------------------------------------------------------------------------------


E = TypeVar("E", bound="Event")


def follow_event_id(source_event_id: str, topic: str, stage: str = "", code: str = "") -> str:
    """The id of the event that answers ``source_event_id`` on ``topic`` (for ``stage``, with
    failure ``code``): 32 hex digits of sha256 over those, so a redelivered or replayed input is
    answered under the same id and the next stage recognises it as a duplicate."""
    digest = hashlib.sha256()
    for part in (source_event_id, topic, stage, code):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


class Event(_Model):
    topic: ClassVar[str] = ""
    #: False for events a stage sends many of per input (progress): they keep random ids.
    derived_id: ClassVar[bool] = True

    schema_version: str = Field(SCHEMA_VERSION, pattern=SCHEMA_VERSION_PATTERN)
    event_id: EventId = Field(default_factory=_new_event_id)
    job_id: JobId
    occurred_at: AwareDatetime = Field(default_factory=_now)
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
        """The next event of the same job: envelope carried over, new timestamp, and an id
        derived from this event's id (:func:`follow_event_id`), unless ``cls`` repeats."""
        base = self.model_dump(exclude={"event_id", "occurred_at", "schema_version"})
        base.update(fields)
        if cls.derived_id and "event_id" not in fields:
            base["event_id"] = follow_event_id(
                self.event_id, cls.topic, str(fields.get("stage", "")), str(fields.get("code", ""))
            )
        return cls.model_validate(base)


def _requirements_schema(schema: dict[str, Any], cls: type[StageInput]) -> None:
    # What StageInput._check_requirements refuses, stated in the exported JSON Schema, so that an
    # event the schema accepts is never refused for a missing field.
    text = {"type": "string", "minLength": 1}
    parts: list[dict[str, Any]] = []
    required = set(schema.get("required", []))
    if cls.required_keys:
        required.add("keys")
        parts.append(
            {
                "properties": {
                    "keys": {
                        "required": list(cls.required_keys),
                        "properties": dict.fromkeys(cls.required_keys, text),
                    }
                }
            }
        )
    if cls.requires_voice:
        required.add("options")
        voice = {
            "anyOf": [
                {"required": ["dataset_key"], "properties": {"dataset_key": text}},
                {"required": ["model_key"], "properties": {"model_key": text}},
            ]
        }
        parts.append(
            {"properties": {"options": {"required": ["voice"], "properties": {"voice": voice}}}}
        )
    schema["required"] = sorted(required)
    if parts:
        schema["allOf"] = parts


class StageInput(Event):
    """An event a stage consumes. What the stage needs of it is declared once, here: checked when
    the event is read (a missing one is ``malformed_event``) and stated in the exported schema."""

    required_keys: ClassVar[tuple[str, ...]] = ()  # ObjectKeys fields that must be set
    requires_voice: ClassVar[bool] = False  # options.voice.dataset_key or model_key

    model_config = ConfigDict(json_schema_extra=_requirements_schema)  # type: ignore[typeddict-item]

    @model_validator(mode="after")
    def _check_requirements(self) -> StageInput:
        for name in self.required_keys:
            if not getattr(self.keys, name):
                raise ValueError(f"keys.{name} is required by the stage that reads {self.topic}")
        voice = self.options.voice
        if self.requires_voice and not (voice.dataset_key or voice.model_key):
            raise ValueError(
                "a voice is required: options.voice.dataset_key (an S3 prefix of recordings) "
                "or options.voice.model_key (an RVC model)"
            )
        return self


class SongUploaded(StageInput):
    """A song to cover and the voice to cover it in: what a backend publishes to start a job.
    Required besides the envelope: ``keys.song`` (the S3 key of the uploaded song) and a voice,
    ``options.voice.dataset_key`` (an S3 prefix of recordings) or ``options.voice.model_key``
    (an existing RVC model)."""

    topic: ClassVar[str] = "song.uploaded"
    required_keys: ClassVar[tuple[str, ...]] = ("song",)
    requires_voice: ClassVar[bool] = True


class VocalsSeparated(StageInput):
    topic: ClassVar[str] = "vocals.separated"
    # the stems the converter and the mixer read later, and the voice the trainer trains or checks
    required_keys: ClassVar[tuple[str, ...]] = (VOCALS, ACCOMPANIMENT)
    requires_voice: ClassVar[bool] = True
    sample_rate: int
    duration_s: float
    separator_model: str
    cache_hit: bool = False


class VoiceTrained(StageInput):
    topic: ClassVar[str] = "voice.trained"
    # the converter's input, and the accompaniment it carries on to the mixer
    required_keys: ClassVar[tuple[str, ...]] = (VOCALS, ACCOMPANIMENT, "voice_model")
    voice_kind: VoiceKind = Field(
        description="'rvc': an RVC model; 'world': the no-weights WORLD fallback voice profile."
    )
    cache_hit: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)


class VocalsConverted(StageInput):
    topic: ClassVar[str] = "vocals.converted"
    required_keys: ClassVar[tuple[str, ...]] = ("converted_vocals", ACCOMPANIMENT)  # the mix
    backend: VoiceKind
    sample_rate: int
    duration_s: float
    cache_hit: bool = False
    converted_backing: str | None = Field(
        None, description="S3 key of the converted backing vocals (options.conversion.backing)."
    )
    quality: ConversionQuality | None = None


class TrackReady(Event):
    topic: ClassVar[str] = "track.ready"
    track_key: str = Field(json_schema_extra=_S3_KEY_EXTRA)
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
    derived_id: ClassVar[bool] = False
    stage: str
    fraction: float = Field(ge=0.0, le=1.0)
    message: str = ""


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
    """An event that cannot be read; ``code`` says why and ``message`` names the field.

    ``job_id`` is the event's ``job_id`` as written when the JSON could be read and held a
    string there (it may itself be the problem); None otherwise.
    """

    def __init__(self, code: str, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked while reading an event, before ``json`` or pydantic can be made to recurse
    without end, build a huge integer or hold a huge string (the whole event is bounded by
    ``SINGTOME_MAX_EVENT_BYTES`` before this)."""

    max_depth: int = 32  # nesting of objects and arrays (an event needs 4)
    max_number_chars: int = 64  # characters of one number literal (ints and floats)
    max_string_chars: int = 16 * 1024  # characters of one string (keys, titles, messages)


DECODE_LIMITS = DecodeLimits()

# Nesting is measured on the brackets left once every string is taken out. A string runs to its
# closing quote or, unterminated, to the end of the text, so each quote starts a match that cannot
# fail and the regex engine reads every character once: linear time whatever the text holds.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_VERSION_RE = re.compile(SCHEMA_VERSION_PATTERN)
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class _Refused(Exception):
    """Raised from inside json.loads' hooks: the text breaks a limit or the rules."""


def _check_depth(text: str, max_depth: int) -> None:
    if text.count("[") + text.count("{") <= max_depth:  # the usual event: nothing to measure
        return
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth:
        raise _Refused(f"nested deeper than {max_depth} levels")


def _json_hooks(limits: DecodeLimits) -> dict[str, Any]:
    def number(literal: str) -> str:
        if len(literal) > limits.max_number_chars:
            raise _Refused(
                f"a number of {len(literal)} characters (the limit is {limits.max_number_chars})"
            )
        return literal

    def parse_int(literal: str) -> int:
        return int(number(literal))

    def parse_float(literal: str) -> float:
        value = float(number(literal))
        if not math.isfinite(value):
            raise _Refused(f"the number {literal} is out of range")
        return value

    def parse_constant(name: str) -> Any:
        raise _Refused(f"{name} is not JSON")

    def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for name, value in pairs:
            if name in obj:
                raise _Refused(f"the field {name[:80]!r} appears twice")
            obj[name] = value
        return obj

    return {
        "parse_int": parse_int,
        "parse_float": parse_float,
        "parse_constant": parse_constant,
        "object_pairs_hook": unique_object,
    }


def _check_strings(value: Any, limits: DecodeLimits, path: str = "", depth: int = 0) -> None:
    """Every string (names and values) bounded, encodable as UTF-8, free of NUL characters."""
    if depth > limits.max_depth:
        raise _Refused(f"nested deeper than {limits.max_depth} levels")
    if isinstance(value, str):
        where = f" (at {path or 'a field name'})"
        if len(value) > limits.max_string_chars:
            raise _Refused(
                f"a string of {len(value)} characters, over the limit of "
                f"{limits.max_string_chars}{where}"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(f"a string holds an unpaired UTF-16 surrogate escape{where}") from None
        if "\0" in value:
            raise _Refused(f"a string holds a NUL character{where}")
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_strings(name, limits, "", depth + 1)
            child = f"{path}.{name[:80]}" if path else name[:80]
            _check_strings(item, limits, child, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, limits, f"{path}.{index}" if path else str(index), depth + 1)


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part)[:80] for part in loc) or "(event)"


def _read_json(payload: bytes | str, limits: DecodeLimits) -> Any:
    if isinstance(payload, bytes):
        if payload.startswith(_BOMS):
            raise _Refused("starts with a byte-order mark; events are UTF-8 JSON without one")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refused(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        text = payload
    _check_depth(text, limits.max_depth)
    try:
        return json.loads(text, **_json_hooks(limits))
    except json.JSONDecodeError as exc:
        raise _Refused(f"not JSON: {exc}") from None
    except RecursionError:  # unreachable after the depth check; kept as a last line
        raise _Refused("nested too deeply") from None


def peek_job_id(payload: bytes | str | None, limits: DecodeLimits = DECODE_LIMITS) -> str | None:
    """The ``job_id`` string of a payload that is not decoded as an event (too large, say), read
    within the same limits; None when there is none to read."""
    if payload is None:
        return None
    try:
        data = _read_json(payload, limits)
        _check_strings(data, limits)
    except _Refused:
        return None
    value = data.get("job_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def decode(
    cls: type[E],
    payload: bytes | str | dict[str, Any] | None,
    limits: DecodeLimits = DECODE_LIMITS,
) -> E:
    """Parse and validate one event, raising only :class:`EventDecodeError` (with a clear message).

    The text is checked before and while it is parsed: UTF-8 without a byte-order mark, nesting
    depth, number and string lengths (``limits``), no NaN/Infinity, no duplicate field names, no
    unpaired surrogates or NUL characters. Then the event is validated against ``cls``.
    """
    if payload is None:
        raise EventDecodeError("malformed_event", "the message has no value (a tombstone)")
    try:
        data: Any = payload
        if isinstance(payload, (bytes, str)):
            data = _read_json(payload, limits)
        _check_strings(data, limits)
    except _Refused as exc:
        raise EventDecodeError("malformed_event", f"unreadable event: {exc}") from None
    if not isinstance(data, dict):
        raise EventDecodeError("malformed_event", "an event must be a JSON object")
    job_id = data.get("job_id") if isinstance(data.get("job_id"), str) else None
    version = data.get("schema_version")
    readable = isinstance(version, str) and _VERSION_RE.fullmatch(version)
    if readable and int(version.split(".", 1)[0]) != SUPPORTED_MAJOR:
        raise EventDecodeError(
            "unsupported_schema_version",
            f"schema_version {version!r} is not supported: this service reads {SUPPORTED_MAJOR}.x",
            job_id,
        )
    try:
        event = cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = "; ".join(f"{_field_path(err['loc'])}: {err['msg']}" for err in errors[:8])
        if len(errors) > 8:
            problems += f"; and {len(errors) - 8} more"
        raise EventDecodeError(
            "malformed_event", f"invalid {cls.topic} event: {problems}", job_id
        ) from None
    except Exception as exc:  # a validator's own error, whatever it is, is the input's fault
        raise EventDecodeError(
            "malformed_event", f"invalid {cls.topic} event: {type(exc).__name__}", job_id
        ) from None
    # The exported JSON Schema is the contract: what it refuses is refused here too (pydantic
    # alone would also take e.g. "20" for an integer).
    from schemas.export import contract_violations

    violations = contract_violations(cls.topic, data)
    if violations:
        raise EventDecodeError(
            "malformed_event", f"invalid {cls.topic} event: {'; '.join(violations)}", job_id
        )
    return event


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()
