"""Decoding an uploaded song into the one format the separator works on.

Any container/codec ffmpeg reads (wav, mp3, flac, ogg, m4a/aac, ...), any channel count and sample
rate becomes a float32 stereo WAV at 44.1 kHz on disk. Audio is never held in memory whole: ffmpeg
writes the temp WAV and the checks read it back in blocks, so a 15-minute song costs a few MB.

Each way an input can be bad has its own error code (see ``foundation.errors.ERROR_CODES``); size
and duration are checked with ``ffprobe`` before anything is decoded.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from foundation.errors import StageError
from foundation.logging import get_logger
from streams.settings import Settings

log = get_logger(__name__)

CHANNELS = 2
BLOCK_FRAMES = 1 << 16
# Decoded audio shorter than this share of the duration the container declares is truncated.
_TRUNCATION_TOLERANCE = 0.98
# Silence is judged per block of this many seconds: one loud second makes a song not silent.
_LEVEL_WINDOW_S = 1.0

# Leading bytes of containers ffmpeg reads: a file that starts like one of these but cannot be
# probed is a damaged audio file, anything else is not audio at all.
_AUDIO_MAGIC: tuple[bytes, ...] = (
    b"RIFF",
    b"fLaC",
    b"ID3",
    b"OggS",
    b"FORM",
    b"caff",
    b"\x1aE\xdf\xa3",
)


@dataclass(frozen=True)
class ProbeInfo:
    """What ffprobe says about a file before it is decoded."""

    format_name: str
    codec: str
    channels: int
    sample_rate: int
    duration_s: float | None


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


def _looks_like_audio(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head.startswith(_AUDIO_MAGIC) or head[4:8] == b"ftyp":
        return True
    # MPEG audio frame sync (mp3/aac ADTS without an ID3 tag): 11 set bits.
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _riff_shortfall(path: Path) -> int:
    """Bytes missing from a WAV's data chunk (0 if whole or not a WAV).

    ffprobe sizes a WAV from the file, not the header, so a cut-off upload looks complete to it.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk = handle.read(8)
            chunk_size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                # 0 and 0xFFFFFFFF mark streamed WAVs whose writer could not seek back.
                if chunk_size in (0, 0xFFFFFFFF):
                    return 0
                return max(0, offset + 8 + chunk_size - size)
            offset += 8 + chunk_size + (chunk_size & 1)
    return 0


def _require_tools() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is not installed: the separator needs ffmpeg to decode audio"
            )


def probe(path: str | Path) -> ProbeInfo:
    """Read the first audio stream's properties with ffprobe (no decoding)."""
    _require_tools()
    path = Path(path)
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unreadable"
        if _looks_like_audio(path):
            raise StageError("corrupt_audio", f"{path.name}: audio file is damaged ({reason})")
        raise StageError("not_audio", f"{path.name}: not an audio file ffmpeg can read ({reason})")
    info = json.loads(result.stdout or "{}")
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not streams:
        raise StageError("not_audio", f"{path.name}: the file holds no audio stream")
    stream = streams[0]
    duration = _float_or_none(stream.get("duration")) or _float_or_none(
        info.get("format", {}).get("duration")
    )
    return ProbeInfo(
        format_name=str(info.get("format", {}).get("format_name", "")),
        codec=str(stream.get("codec_name", "")),
        channels=int(stream.get("channels") or 0),
        sample_rate=int(stream.get("sample_rate") or 0),
        duration_s=duration,
    )


def _float_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def check_size(path: Path, settings: Settings) -> None:
    size = path.stat().st_size
    if size == 0:
        raise StageError("empty_audio", f"{path.name}: the file is empty (0 bytes)")
    if size > settings.max_audio_bytes:
        raise StageError(
            "audio_too_large",
            f"{path.name}: {size / 1e6:.1f} MB is over the limit of "
            f"{settings.max_audio_bytes / 1e6:.1f} MB (SINGTOME_MAX_AUDIO_BYTES)",
        )


def _too_long(name: str, duration_s: float, settings: Settings) -> StageError:
    return StageError(
        "audio_too_long",
        f"{name}: {duration_s:.1f} s is over the limit of {settings.max_audio_duration_s:g} s "
        "(SINGTOME_MAX_AUDIO_DURATION_S)",
    )


def read_blocks(path: str | Path, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Yield ``(frames, channels)`` float32 blocks of a sound file, in order."""
    with sf.SoundFile(str(path)) as handle:
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block


def loudest_window_dbfs(path: str | Path, sample_rate: int) -> float:
    """RMS level (dBFS) of the loudest ``_LEVEL_WINDOW_S`` window, read block by block.

    Raises ``invalid_audio`` at the first NaN or infinite sample (a float WAV can hold them and
    ffmpeg passes them on): they would poison every stage after this one.
    """
    window = max(1, int(_LEVEL_WINDOW_S * sample_rate))
    loudest = 0.0
    for index, block in enumerate(read_blocks(path, window)):
        finite = np.isfinite(block)
        if not finite.all():
            frame = index * window + int(np.argmin(finite.all(axis=1)))
            raise StageError(
                "invalid_audio",
                f"the audio holds a NaN or infinite sample (at {frame / sample_rate:.3f} s)",
            )
        loudest = max(loudest, float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))))
    return 20.0 * math.log10(loudest) if loudest > 0 else -math.inf


def _channel_layout_args(channels: int) -> list[str]:
    if channels == 1:
        # A mono recording plays at full level on both sides (ffmpeg's own upmix is -3 dB).
        return ["-af", "pan=stereo|c0=c0|c1=c0"]
    # rematrix_maxval keeps a surround downmix from summing past full scale.
    return ["-ac", str(CHANNELS), "-rematrix_maxval", "1.0"]


def decode(
    song_path: str | Path, out_wav: str | Path, settings: Settings, sample_rate: int | None = None
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
    missing = _riff_shortfall(song_path)
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
