"""Errors a stage may raise, and the catalogue of error codes (docs/reliability.md lists them).

A stage raises :class:`StageError` with a code from :data:`ERROR_CODES` for anything the input is
to blame for; the runner turns it into ``track.failed``. :class:`TransientError` (and store
unavailability) is retried with backoff first, and ends as a retriable ``track.failed`` when the
retries run out, so a later replay can resume the job.
"""

from __future__ import annotations

ERROR_CODES: dict[str, str] = {
    # envelope / broker
    "malformed_event": "The event is not JSON or misses/mistypes a field (the message names it).",
    "unsupported_schema_version": "The event's schema_version major is not one this service reads.",
    "event_too_large": "The event is larger than SINGTOME_MAX_EVENT_BYTES.",
    "output_too_large": "The stage's output event is larger than the broker takes "
    "(SINGTOME_MAX_MESSAGE_BYTES).",
    "broker_unavailable": "The broker did not acknowledge the output event through every retry "
    "(retriable: replay resumes).",
    # objects and the key policy (streams/keypolicy.py)
    "forbidden_key": "The event names an S3 key outside what its job may read (another job's "
    "upload, a bare prefix such as uploads/, a '..' segment, a leading '/', a scheme): see "
    "README 'Key policy'.",
    "invalid_key": "The event names an S3 key that is not in normal form (empty, over 1024 bytes, "
    "control characters, backslash, '//') or that S3 refused.",
    "missing_object": "An S3 key named in the event does not exist.",
    "store_unavailable": "S3 stayed unavailable through every retry (retriable: replay resumes).",
    "timeout": "The stage ran longer than SINGTOME_STAGE_TIMEOUT_S (retriable).",
    # audio input
    "not_audio": "The object is not audio that ffmpeg can decode.",
    "empty_audio": "The audio has no samples.",
    "corrupt_audio": "The audio is truncated or corrupt.",
    "invalid_audio": "The audio holds NaN or infinite samples.",
    "silent_audio": "The audio is silent (below SINGTOME_SILENCE_DBFS).",
    "audio_too_long": "The audio is longer than SINGTOME_MAX_AUDIO_DURATION_S.",
    "audio_too_large": "The file is larger than SINGTOME_MAX_AUDIO_BYTES.",
    # models and voices
    "model_not_found": "A model file is not in the model directory (the message names both).",
    "unsafe_model": "A checkpoint needs pickled code to load and was refused.",
    "invalid_model": "A model file is not in a format this service reads.",
    "model_mismatch": "A model and its index (or features) have different dimensions.",
    "no_voice": "The job names neither a voice dataset nor a voice model.",
    "dataset_empty": "The voice dataset has no audio files.",
    "dataset_too_short": "Too little voiced audio remains after slicing the dataset.",
    "dataset_too_large": "The dataset has more files or bytes than the limits allow.",
    "unsupported_format": "The requested output format is not supported.",
    "stem_mismatch": "Stems to be mixed differ in length beyond the tolerance.",
    "internal_error": "An unexpected error in the stage (a bug): see the worker's logs.",
}


# Codes a replay can resume: the input was fine, the service was not. The one declaration of
# retriability: a StageError's ``retriable``, a TransientError's code and every track.failed's
# ``retriable`` flag (streams/runner.py) are read from it.
RETRIABLE_CODES = frozenset({"store_unavailable", "timeout", "broker_unavailable"})


def is_retriable(code: str) -> bool:
    """Whether a failure with ``code`` may succeed on a replay."""
    return code in RETRIABLE_CODES


def error_codes_markdown() -> str:
    """The table of error codes in docs/reliability.md (kept in step by a test)."""
    rows = ["| code | meaning | retriable |", "| --- | --- | --- |"]
    for code, meaning in ERROR_CODES.items():
        rows.append(f"| `{code}` | {meaning} | {'yes' if is_retriable(code) else 'no'} |")
    return "\n".join(rows)


class StageError(Exception):
    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}: add it to ERROR_CODES")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        return is_retriable(self.code)


class TransientError(StageError):
    """Worth retrying at once: the same call may succeed later (S3 5xx, a timeout, a busy GPU).
    Its code is a retriable one, so what the retries do not cure a replay may."""

    def __init__(self, code: str, message: str) -> None:
        if not is_retriable(code):
            raise ValueError(
                f"{code!r} is not retriable: a TransientError needs one of "
                f"{sorted(RETRIABLE_CODES)}"
            )
        super().__init__(code, message)
