"""The separator stage: a song file in, FLAC stems (44.1 kHz stereo) out. No Kafka here.

``separate(song, out_dir, params, settings, progress)`` decodes the song, streams it in
overlapping chunks through the separation model and the optional vocal chain (de-noise, de-reverb,
karaoke lead/backing split, each a UVR model applied to the vocals of the same chunk), and writes
the stems incrementally. Memory is bounded by the chunk length whatever the song's length.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agents.separator.backends import (
    A_CAPPELLA,
    SAMPLE_RATE,
    SeparationBackend,
    Stems,
    backend_kind,
    load_backend,
)
from agents.separator.chunking import FlacStemWriter, ProcessFn, WavReader, run_chunked
from agents.separator.decode import decode
from foundation.errors import StageError
from foundation.logging import get_logger
from foundation.progress import ProgressFn
from schemas.events import SeparatorOptions
from schemas.vocabulary import ACCOMPANIMENT, BACKING_VOCALS, VOCALS
from streams.outputs import OutputParams
from streams.settings import AudioSettings, ModelsSettings, SeparatorSettings

log = get_logger(__name__)

# Vocal chain steps, in the order they run: clean the voice first, split lead/backing last.
DENOISE = "denoise"
DEREVERB = "dereverb"
KARAOKE = "karaoke"
CHAIN_ORDER = (DENOISE, DEREVERB, KARAOKE)


@dataclass(frozen=True)
class SeparationParams:
    """Everything that decides the stems (besides the song and the code version)."""

    model: str
    skip: bool = False
    denoise_model: str | None = None
    dereverb_model: str | None = None
    karaoke_model: str | None = None

    @classmethod
    def from_options(
        cls, options: SeparatorOptions, settings: SeparatorSettings
    ) -> SeparationParams:
        return cls(
            model=options.model or settings.model,
            skip=options.skip,
            denoise_model=options.denoise_model,
            dereverb_model=options.dereverb_model,
            karaoke_model=options.karaoke_model,
        )

    @property
    def separation_model(self) -> str:
        """The model that splits the song: the a cappella pass-through when ``skip`` is set."""
        return A_CAPPELLA if self.skip else self.model

    @property
    def chain(self) -> list[tuple[str, str]]:
        steps = {
            DENOISE: self.denoise_model,
            DEREVERB: self.dereverb_model,
            KARAOKE: self.karaoke_model,
        }
        return [(step, model) for step in CHAIN_ORDER if (model := steps[step])]

    @property
    def stem_names(self) -> tuple[str, ...]:
        names = (VOCALS, ACCOMPANIMENT)
        return (*names, BACKING_VOCALS) if self.karaoke_model else names

    @property
    def label(self) -> str:
        """Human-readable model description, e.g. ``spleeter + denoise:UVR-DeNoise-Lite.pth``."""
        return " + ".join([self.separation_model, *(f"{s}:{m}" for s, m in self.chain)])


class StemsParams(OutputParams):
    """What decides the stems besides the song's bytes and the code version (their digest).

    Chunk length and overlap change the output (models see different context), so they count.
    """

    backend: str
    model: str
    chain: list[tuple[str, str]]
    sample_rate: int
    chunk_s: float
    overlap_s: float

    @classmethod
    def of(
        cls, params: SeparationParams, settings: SeparatorSettings, audio: AudioSettings
    ) -> StemsParams:
        return cls(
            backend=backend_kind(params.separation_model),
            model=params.separation_model,
            chain=params.chain,
            sample_rate=audio.stem_sample_rate,
            chunk_s=settings.chunk_s,
            overlap_s=settings.overlap_s,
        )


@dataclass(frozen=True)
class SeparationResult:
    stems: dict[str, Path]
    sample_rate: int
    duration_s: float
    model: str


# --------------------------------------------------------------------------------------------------
# Mapping each model's own stem names onto the roles the pipeline needs
# --------------------------------------------------------------------------------------------------


def _by_lower(stems: Stems) -> dict[str, str]:
    return {name.lower(): name for name in stems}


def song_roles(stems: Stems, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(vocals, accompaniment) from a separation model's stems.

    Two-stem models name them 'vocals'/'accompaniment' or 'Vocals'/'Instrumental'; multi-stem
    models (Demucs: drums, bass, other, ...) have their non-vocal stems summed as accompaniment.
    """
    names = _by_lower(stems)
    if "vocals" not in names:
        raise StageError(
            "invalid_model",
            f"separation model {model!r} gives stems {sorted(stems)}, none of them vocals",
        )
    vocals = stems[names["vocals"]]
    for band in ("accompaniment", "instrumental"):
        if band in names:
            return vocals, stems[names[band]]
    others = [stems[n] for n in stems if n != names["vocals"]]
    if not others:
        raise StageError("invalid_model", f"separation model {model!r} gives only vocals")
    return vocals, np.sum(others, axis=0).astype(np.float32)


def clean_vocals(stems: Stems, model: str, step: str) -> np.ndarray:
    """The wanted stem of a de-noise/de-reverb model: 'No Noise', 'No Reverb', 'No Echo', 'Dry'."""
    names = _by_lower(stems)
    for lower, name in names.items():
        if lower.startswith("no ") or lower in ("dry", "vocals"):
            return stems[name]
    raise StageError(
        "invalid_model",
        f"{step} model {model!r} gives stems {sorted(stems)}; expected one named 'No ...' or 'Dry'",
    )


def lead_and_backing(stems: Stems, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(lead, backing) from a karaoke model run on vocals: 'Vocals' is lead, the rest backing."""
    names = _by_lower(stems)
    lead_name = next((names[n] for n in ("lead vocals", "vocals", "lead_only") if n in names), None)
    if lead_name is None or len(stems) < 2:
        raise StageError(
            "invalid_model",
            f"karaoke model {model!r} gives stems {sorted(stems)}; expected 'Vocals' + backing",
        )
    backing = [stems[n] for n in stems if n != lead_name]
    return stems[lead_name], np.sum(backing, axis=0).astype(np.float32)


@dataclass
class SeparationPipeline:
    """Per chunk: the separation model, then each configured vocal-chain model on the vocals."""

    separator: SeparationBackend
    chain: list[tuple[str, SeparationBackend]] = field(default_factory=list)

    def __call__(self, audio: np.ndarray) -> Stems:
        vocals, accompaniment = song_roles(self.separator.separate(audio), self.separator.name)
        out: Stems = {}
        for step, backend in self.chain:
            stems = backend.separate(vocals)
            if step == KARAOKE:
                vocals, out[BACKING_VOCALS] = lead_and_backing(stems, backend.name)
            else:
                vocals = clean_vocals(stems, backend.name, step)
        out[VOCALS] = vocals
        out[ACCOMPANIMENT] = accompaniment
        return {name: out[name] for name in (VOCALS, ACCOMPANIMENT, BACKING_VOCALS) if name in out}


def build_pipeline(params: SeparationParams, models: ModelsSettings) -> SeparationPipeline:
    from foundation.device import resolve_device

    device = str(resolve_device(models.device))
    separator = load_backend(params.separation_model, models.dir, device)
    chain = []
    for step, model in params.chain:
        if backend_kind(model) != "uvr":
            raise StageError("invalid_model", f"{step} needs a UVR model file, got {model!r}")
        chain.append((step, load_backend(model, models.dir, device)))
    return SeparationPipeline(separator, chain)


def separate_stream(
    decoded_wav: Path,
    out_dir: Path,
    process: ProcessFn,
    settings: SeparatorSettings,
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Run ``process`` (audio -> stems) over a decoded WAV in chunks, writing one FLAC per stem."""
    writer = FlacStemWriter(out_dir, SAMPLE_RATE)
    with WavReader(decoded_wav) as reader:
        if reader.sample_rate != SAMPLE_RATE:
            raise ValueError(f"decoded audio must be {SAMPLE_RATE} Hz, got {reader.sample_rate}")
        try:
            run_chunked(
                reader.read,
                reader.frames,
                process,
                writer.write,
                chunk=round(settings.chunk_s * SAMPLE_RATE),
                overlap=round(settings.overlap_s * SAMPLE_RATE),
                progress=progress,
            )
        except BaseException:
            writer.abort()
            raise
    return writer.commit()


def separate(
    song_path: str | Path,
    out_dir: str | Path,
    params: SeparationParams,
    settings: SeparatorSettings | None = None,
    progress: ProgressFn | None = None,
    *,
    models: ModelsSettings | None = None,
    audio: AudioSettings | None = None,
) -> SeparationResult:
    """Split ``song_path`` into FLAC stems in ``out_dir``: vocals, accompaniment, [backing_vocals].

    ``settings`` (chunking), ``models`` (model dir, device) and ``audio`` (the song's limits)
    default to their defaults.

    Raises :class:`StageError` for bad input (see :func:`agents.separator.decode.decode`) and for
    missing or unusable models (``model_not_found``, ``invalid_model``).
    """
    settings = settings or SeparatorSettings()
    audio = audio or AudioSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if audio.stem_sample_rate != SAMPLE_RATE:
        raise ValueError(f"separation models work at {SAMPLE_RATE} Hz (SINGTOME_STEM_SAMPLE_RATE)")
    # Load models before decoding: a missing model fails fast, before minutes of work.
    pipeline = build_pipeline(params, models or ModelsSettings())
    with tempfile.TemporaryDirectory(prefix=".decode-", dir=out_dir) as scratch:
        decoded = decode(song_path, Path(scratch) / "song.wav", audio, SAMPLE_RATE)
        if progress is not None:
            progress(0.0, "decoded")
        log.info(
            "separating", model=params.label, duration_s=round(decoded.duration_s, 2),
            chunk_s=settings.chunk_s,
        )  # fmt: skip
        stems = separate_stream(decoded.path, out_dir, pipeline, settings, progress)
    return SeparationResult(
        stems=stems,
        sample_rate=SAMPLE_RATE,
        duration_s=decoded.duration_s,
        model=params.label,
    )
