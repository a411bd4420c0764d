"""Encode audio with ffmpeg (wav, flac, mp3, m4a/AAC) with title/artist tags.

ffmpeg runs as a subprocess from PATH: the mix is written once as a float WAV and ffmpeg
converts it, so every format goes through one code path and gets the same tags.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from foundation.errors import StageError
from foundation.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Codec:
    muxer: str  # ffmpeg's -f name: the container
    args: tuple[str, ...]  # ffmpeg output arguments that select the codec
    content_type: str
    lossy: bool = False


FORMATS: dict[str, Codec] = {
    # 24-bit PCM: the mix is float; 24 bits keep its quiet tails without dither noise.
    "wav": Codec("wav", ("-c:a", "pcm_s24le"), "audio/wav"),
    "flac": Codec("flac", ("-c:a", "flac", "-sample_fmt", "s32"), "audio/flac"),
    # ID3v2.3: the tag version most players read.
    "mp3": Codec("mp3", ("-c:a", "libmp3lame", "-id3v2_version", "3"), "audio/mpeg", lossy=True),
    # faststart moves the index to the front so a browser can start playing while downloading.
    "m4a": Codec("ipod", ("-c:a", "aac", "-movflags", "+faststart"), "audio/mp4", lossy=True),
}

# MP3 and AAC only take a few sample rates; other rates (e.g. 40 kHz) are resampled to this one.
LOSSY_RATES = frozenset({32000, 44100, 48000})
LOSSY_FALLBACK_RATE = 48000

FFMPEG_TIMEOUT_S = 600


def check_format(fmt: str) -> Codec:
    codec = FORMATS.get(fmt.lower())
    if codec is None:
        raise StageError(
            "unsupported_format",
            f"output format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}",
        )
    return codec


def content_type(fmt: str) -> str:
    return check_format(fmt).content_type


def ffmpeg_path() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not on PATH; install it (apt-get install ffmpeg)")
    return path


def run_tool(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(args, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {' | '.join(tail)}")
    return result


def encode(
    audio: np.ndarray,
    sample_rate: int,
    out_path: Path,
    fmt: str,
    *,
    bitrate: str = "192k",
    title: str | None = None,
    artist: str | None = None,
) -> Path:
    """Write ``audio`` (float, (samples, channels)) to ``out_path`` in ``fmt`` with tags."""
    codec = check_format(fmt)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    with tempfile.TemporaryDirectory(prefix="singtome-encode-") as tmp:
        source = Path(tmp) / "mix.wav"
        sf.write(str(source), audio, sample_rate, subtype="FLOAT")
        args += ["-i", str(source), "-map_metadata", "-1", *codec.args]
        if codec.lossy:
            args += ["-b:a", bitrate]
            if sample_rate not in LOSSY_RATES:
                args += ["-ar", str(LOSSY_FALLBACK_RATE)]
        for tag, value in (("title", title), ("artist", artist)):
            if value:
                args += ["-metadata", f"{tag}={value}"]
        # ffmpeg picks the muxer from the extension; name it so a path without one still works.
        partial = out_path.with_name(out_path.name + ".part")
        args += ["-f", codec.muxer, str(partial)]
        run_tool(args)
        partial.replace(out_path)
    log.debug("mix encoded", path=str(out_path), format=fmt)
    return out_path
