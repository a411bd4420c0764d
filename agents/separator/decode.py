"""Decoding an uploaded song into the one format the separator works on.

Any container/codec ffmpeg reads (wav, mp3, flac, ogg, m4a/aac, ...), any channel count and sample
rate becomes a float32 stereo WAV at 44.1 kHz on disk. Audio is never held in memory whole: ffmpeg
writes the temp WAV and the checks read it back in blocks, so a 15-minute song costs a few MB.

Each way an input can be bad has its own error code (see ``foundation.errors.ERROR_CODES``); size
and duration are checked with ``ffprobe`` before anything is decoded.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from foundation.errors import StageError
from foundation.levels import loudest_window_dbfs
from foundation.logging import get_logger
from foundation.probe import ProbeInfo, probe, riff_shortfall
from streams.settings import AudioSettings

log = get_logger(__name__)

CHANNELS = 2
# Decoded audio shorter than this share of the duration the container declares is truncated.
_TRUNCATION_TOLERANCE = 0.98


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded song: a float32 stereo WAV at ``sample_rate`` on disk."""

    path: Path
    sample_rate: int
    frames: int
    source: ProbeInfo

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def check_size(path: Path, settings: AudioSettings) -> None:
    size = path.stat().st_size
    if size == 0:
        raise StageError("empty_audio", f"{path.name}: the file is empty (0 bytes)")
    if size > settings.max_audio_bytes:
        raise StageError(
            "audio_too_large",
            f"{path.name}: {size / 1e6:.1f} MB is over the limit of "
            f"{settings.max_audio_bytes / 1e6:.1f} MB (SINGTOME_MAX_AUDIO_BYTES)",
        )


def _too_long(name: str, duration_s: float, settings: AudioSettings) -> StageError:
    return StageError(
        "audio_too_long",
        f"{name}: {duration_s:.1f} s is over the limit of {settings.max_audio_duration_s:g} s "
        "(SINGTOME_MAX_AUDIO_DURATION_S)",
    )


def _channel_layout_args(channels: int) -> list[str]:
    if channels == 1:
        # A mono recording plays at full level on both sides (ffmpeg's own upmix is -3 dB).
        return ["-af", "pan=stereo|c0=c0|c1=c0"]
    # rematrix_maxval keeps a surround downmix from summing past full scale.
    return ["-ac", str(CHANNELS), "-rematrix_maxval", "1.0"]


def decode(
    song_path: str | Path,
    out_wav: str | Path,
    settings: AudioSettings,
    sample_rate: int | None = None,
) -> DecodedAudio:
    """Check and decode ``song_path`` to a float32 stereo WAV at ``sample_rate`` (default 44.1 kHz).

    Raises :class:`StageError` with ``not_audio``, ``empty_audio``, ``corrupt_audio``,
    ``invalid_audio`` (NaN/inf samples), ``silent_audio``, ``audio_too_long`` or
    ``audio_too_large``.
    """
    song_path, out_wav = Path(song_path), Path(out_wav)
    rate = sample_rate or settings.stem_sample_rate
    if not song_path.is_file():
        raise StageError("missing_object", f"song file not found: {song_path}")
    check_size(song_path, settings)
    info = probe(song_path)
    if info.duration_s is not None and info.duration_s > settings.max_audio_duration_s:
        raise _too_long(song_path.name, info.duration_s, settings)
    missing = riff_shortfall(song_path)
    if missing:
        raise StageError(
            "corrupt_audio", f"{song_path.name}: truncated WAV, {missing} bytes of audio missing"
        )

    out_wav.parent.mkdir(parents=True, exist_ok=True)
    # -t bounds the work when the container does not declare a duration (raw streams).
    limit_s = settings.max_audio_duration_s + 1.0
    command = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(song_path),
        "-map", "0:a:0", "-vn", "-t", f"{limit_s:.3f}",
        *_channel_layout_args(info.channels),
        "-ar", str(rate), "-c:a", "pcm_f32le", "-f", "wav", str(out_wav),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not out_wav.is_file():
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise StageError("corrupt_audio", f"{song_path.name}: decoding failed ({reason})")

    frames = sf.info(str(out_wav)).frames
    decoded_s = frames / rate
    if frames == 0:
        raise StageError("empty_audio", f"{song_path.name}: the audio has no samples")
    if decoded_s > settings.max_audio_duration_s:
        raise _too_long(song_path.name, decoded_s, settings)
    declared = info.duration_s
    # The decoder stops early on a truncated file (often without an error): compare with what
    # the container declared. One codec frame of slack covers encoder padding.
    if declared and decoded_s + 0.05 < declared * _TRUNCATION_TOLERANCE:
        raise StageError(
            "corrupt_audio",
            f"{song_path.name}: truncated, decoded {decoded_s:.2f} s of {declared:.2f} s",
        )
    try:
        level = loudest_window_dbfs(out_wav, rate)
    except StageError as exc:
        raise StageError(exc.code, f"{song_path.name}: {exc.message}") from None
    if level < settings.silence_dbfs:
        raise StageError(
            "silent_audio",
            f"{song_path.name}: the audio is silent (loudest second at {level:.1f} dBFS, "
            f"threshold {settings.silence_dbfs:.0f} dBFS)",
        )
    log.info(
        "song decoded",
        source_format=info.format_name,
        codec=info.codec,
        channels=info.channels,
        source_rate=info.sample_rate,
        duration_s=round(decoded_s, 3),
    )
    return DecodedAudio(path=out_wav, sample_rate=rate, frames=frames, source=info)
