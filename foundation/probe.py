"""What a file holds before it is decoded: the one ffprobe call (container, codec, channels, rate,
duration, tags), whether its leading bytes look like audio, and what a WAV header says is missing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from foundation.errors import StageError

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
    # The stream's and the container's tags, lower-case keys.
    tags: dict[str, str] = field(default_factory=dict)


def _looks_like_audio(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head.startswith(_AUDIO_MAGIC) or head[4:8] == b"ftyp":
        return True
    # MPEG audio frame sync (mp3/aac ADTS without an ID3 tag): 11 set bits.
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def riff_shortfall(path: Path) -> int:
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
            raise RuntimeError(f"{tool} is not installed: decoding and probing audio need ffmpeg")


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
    fmt = info.get("format", {})
    tags = {k.lower(): str(v) for k, v in {**stream.get("tags", {}), **fmt.get("tags", {})}.items()}
    duration = _float_or_none(stream.get("duration")) or _float_or_none(
        info.get("format", {}).get("duration")
    )
    return ProbeInfo(
        format_name=str(info.get("format", {}).get("format_name", "")),
        codec=str(stream.get("codec_name", "")),
        channels=int(stream.get("channels") or 0),
        sample_rate=int(stream.get("sample_rate") or 0),
        duration_s=duration,
        tags=tags,
    )


def _float_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None
