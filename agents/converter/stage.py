"""The converter stage as a plain function: vocals + a voice → converted vocals (FLAC, stem rate).

Two backends, chosen by the voice file:

* ``'rvc'``: an RVC voice model (``.pth``, optionally with its ``.index``), converted by
  :mod:`agents.converter.pipeline` with the HuBERT/ContentVec checkpoint from
  ``settings.models.hubert_path``;
* ``'world'``: a WORLD voice profile (``profile.npz``), the no-weights fallback of
  :mod:`agents.voice.world`, used when no content encoder is configured.

The output has the stems' sample rate and exactly the vocals' length, so the mixer can lay it
over the accompaniment sample for sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.converter.models import (
    ModelCache,
    cached_content_encoder,
    cached_index,
    cached_voice_model,
    shared_cache,
)
from agents.voice import world
from foundation.device import resolve_device
from foundation.errors import StageError
from foundation.logging import get_logger
from foundation.progress import ProgressFn
from foundation.resample import resample_signal
from foundation.signal import Allocate, DiskSignal, Signal, fit, write_sound_file
from schemas.events import ConversionOptions, ConversionQuality
from schemas.vocabulary import WORLD_F0_METHODS, VoiceKind
from streams.outputs import OutputParams
from streams.settings import AudioSettings, ConverterSettings, ModelsSettings

log = get_logger(__name__)


# Loudness is judged on the loudest 50 ms: a vocal stem is mostly pauses.
LOUDNESS_WINDOW_S = 0.05
LOUDNESS_BLOCK = 1 << 20
"""Samples read at a time when judging silence."""


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class ConversionResult:
    path: Path  # FLAC at ``sample_rate``
    backend: VoiceKind
    sample_rate: int
    duration_s: float
    semitones: int = 0  # the key applied
    key_method: str = "requested"  # or 'auto_octave' (WORLD)


@dataclass(frozen=True)
class VoiceFiles:
    """The voice to convert into: a model (or profile) file and the RVC index, if any."""

    model: Path
    index: Path | None
    backend: VoiceKind


def find_voice_files(voice_dir_or_files: Path | Sequence[Path]) -> VoiceFiles:
    """The voice files in a folder (or a list of files): ``*.pth`` + ``*.index``, or a WORLD
    ``profile.npz`` (recognised by content). ``StageError('model_not_found')`` when none."""
    if isinstance(voice_dir_or_files, str | Path):
        root = Path(voice_dir_or_files)
        files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    else:
        files = [Path(p) for p in voice_dir_or_files if p is not None]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise StageError("model_not_found", f"voice file not found: {missing[0]}")
    models = [p for p in files if p.suffix == ".pth"]
    indexes = [p for p in files if p.suffix == ".index"]
    profiles = [p for p in files if p.suffix == ".npz" and world.is_profile_file(p)]
    if models:
        # Training folders hold G_*/D_* checkpoints too; the exported model is the other one.
        exported = [p for p in models if not p.name.startswith(("G_", "D_"))] or models
        return VoiceFiles(exported[0], indexes[0] if indexes else None, "rvc")
    if profiles:
        return VoiceFiles(profiles[0], None, "world")
    names = ", ".join(p.name for p in files) or "nothing"
    raise StageError(
        "model_not_found",
        f"no voice model (.pth) or WORLD profile (profile.npz) among: {names}",
    )


def peak_loudness_dbfs(audio: Signal, sr: int) -> float:
    """RMS level (dBFS) of the loudest :data:`LOUDNESS_WINDOW_S` window, a few windows at a
    time (``audio`` may be a disk signal)."""
    window = max(1, int(LOUDNESS_WINDOW_S * sr))
    usable = len(audio) // window * window
    if usable == 0:
        x = np.asarray(audio[:], dtype=np.float64)
        energy = float(np.mean(x**2)) if x.size else 0.0
    else:
        energy = 0.0
        step = max(1, LOUDNESS_BLOCK // window) * window
        for first in range(0, usable, step):
            x = np.asarray(audio[first : min(usable, first + step)], dtype=np.float64)
            energy = max(energy, float(np.max(np.mean(x.reshape(-1, window) ** 2, axis=1))))
    return 10.0 * float(np.log10(max(energy, 1e-20)))


def _file_identity(path: Path | None) -> str | None:
    # Configured checkpoints are large; name and size tell versions apart without hashing them.
    if path is None:
        return None
    try:
        return f"{path.name}:{path.stat().st_size}"
    except OSError:
        return path.name


class ConversionParams(OutputParams):
    """What decides the converted vocals besides the input files' bytes and the code version."""

    options: ConversionOptions
    backend: VoiceKind
    sample_rate: int
    content_encoder: str | None = None  # RVC: the configured HuBERT/ContentVec checkpoint
    f0_method: str | None = None  # RVC: the pitch method that will run
    rmvpe: str | None = None  # RVC with RMVPE: its weights

    @classmethod
    def of(
        cls,
        options: ConversionOptions,
        backend: VoiceKind,
        models: ModelsSettings,
        audio: AudioSettings,
    ) -> ConversionParams:
        if backend == "world":
            return cls(options=options, backend=backend, sample_rate=audio.stem_sample_rate)
        method = pitch_method(options, models)
        return cls(
            options=options,
            backend=backend,
            sample_rate=audio.stem_sample_rate,
            content_encoder=_file_identity(models.hubert_path),
            f0_method=method,
            rmvpe=_file_identity(models.rmvpe_path) if method == "rmvpe" else None,
        )


def pitch_method(params: ConversionOptions, models: ModelsSettings) -> str:
    """The f0 method that will run: RMVPE needs weights; without them FCPE stands in."""
    from agents.voice.f0 import resolve_f0_method

    return resolve_f0_method(params.f0_method, models.rmvpe_path)


def _f0_extractor(method: str, models: ModelsSettings, device: Any, cache: ModelCache) -> Any:
    from agents.voice.f0 import get_f0_extractor

    rmvpe = models.rmvpe_path if method == "rmvpe" else None
    key = f"f0:{method}:{rmvpe}:{device}"

    def load() -> Any:
        try:
            return get_f0_extractor(method, rmvpe_path=rmvpe, device=str(device))
        except ValueError as exc:
            raise StageError("invalid_model", str(exc)) from None

    return cache.get(key, load)


def _index_dim(index: Any) -> int:
    faiss_index, big_npy = index
    dim = getattr(faiss_index, "d", None)
    return int(dim) if dim is not None else int(np.asarray(big_npy).shape[1])


def _convert_rvc(
    vocals_path: Path,
    voice: VoiceFiles,
    params: ConversionOptions,
    settings: ConverterSettings,
    models: ModelsSettings,
    output_sr: int,
    progress: ProgressFn,
    cache: ModelCache,
    allocate: Allocate,
) -> tuple[Signal, int]:
    from agents.converter.pipeline import convert_rvc

    if models.hubert_path is None:
        raise StageError(
            "model_not_found",
            "an RVC voice model needs a HuBERT/ContentVec checkpoint: `singtome models pull "
            "hubert_base.pt`, or set SINGTOME_HUBERT_PATH",
        )
    device = resolve_device(models.device)
    log.info("converting with RVC", content_encoder=str(models.hubert_path), device=str(device))
    progress(0.0, "loading the voice model")
    voice_model = cached_voice_model(
        voice.model, device, cache, settings.runtime, settings.tile_frames
    )
    encoder = cached_content_encoder(models.hubert_path, device, cache)
    index = cached_index(voice.index, cache) if voice.index is not None else None

    feature_dim = getattr(encoder, "feature_dim", None)
    if callable(feature_dim):
        try:
            dim = int(feature_dim(voice_model.version))
        except StageError as exc:
            raise StageError("model_mismatch", f"content encoder: {exc.message}") from None
        if dim != voice_model.phone_dim:
            raise StageError(
                "model_mismatch",
                f"the content encoder gives {dim}-d features; the {voice_model.version} voice "
                f"model needs {voice_model.phone_dim}",
            )
    if index is not None and _index_dim(index) != voice_model.phone_dim:
        raise StageError(
            "model_mismatch",
            f"the index holds {_index_dim(index)}-d features; the {voice_model.version} voice "
            f"model needs {voice_model.phone_dim}-d ({voice.index.name if voice.index else ''})",
        )
    extractor = (
        _f0_extractor(pitch_method(params, models), models, device, cache)
        if voice_model.f0
        else None
    )
    return convert_rvc(
        vocals_path,
        voice_model,
        encoder,
        index,
        params,
        extractor,
        lambda fraction, message: progress(0.05 + 0.9 * fraction, message),
        output_sr=output_sr,
        batch_pieces=settings.batch_pieces or (4 if device.type == "cuda" else 1),
        allocate=allocate,
    )


def convert_vocals(
    vocals_path: Path,
    voice_dir_or_files: VoiceFiles | Path | Sequence[Path],
    params: ConversionOptions,
    settings: ConverterSettings | None = None,
    progress: ProgressFn = _no_progress,
    out_path: Path | None = None,
    cache: ModelCache | None = None,
    key: int | None = None,
    *,
    models: ModelsSettings | None = None,
    audio: AudioSettings | None = None,
) -> ConversionResult:
    """Convert the vocals at ``vocals_path`` into the voice in ``voice_dir_or_files``: voice
    files whose kind is already decided (:class:`VoiceFiles`), or a folder or files to look the
    voice up in (:func:`find_voice_files`).

    ``key`` fixes the transpose (no automatic octave): the backing vocals get the lead's key.

    ``settings`` (runtime, batching, cache size), ``models`` (content encoder, RMVPE, device) and
    ``audio`` (stem rate, silence) default to their defaults.

    Writes FLAC at ``audio.stem_sample_rate`` to ``out_path`` (default: beside the vocals).
    Errors: ``silent_audio``, ``model_not_found``, ``model_mismatch``, ``invalid_model``,
    ``unsafe_model`` and the audio decoding codes of :func:`foundation.audio.load_audio`.
    """
    from foundation.audio import load_signal

    settings = settings or ConverterSettings()
    models = models or ModelsSettings()
    audio = audio or AudioSettings()
    vocals_path = Path(vocals_path)
    voice = (
        voice_dir_or_files
        if isinstance(voice_dir_or_files, VoiceFiles)
        else find_voice_files(voice_dir_or_files)
    )
    sr = audio.stem_sample_rate
    out_path = Path(out_path) if out_path else vocals_path.with_name("converted_vocals.flac")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The song-length signals stay in temporary files beside the output, read and written a
    # block at a time: the worker's memory does not grow with the song's length.
    on_disk = DiskSignal.factory(out_path.parent)
    vocals = load_signal(vocals_path, sr, on_disk)
    loudness = peak_loudness_dbfs(vocals, sr)
    if loudness < audio.silence_dbfs:
        raise StageError(
            "silent_audio",
            f"the vocals are silent (loudest {LOUDNESS_WINDOW_S * 1000:.0f} ms at "
            f"{loudness:.0f} dBFS, below {audio.silence_dbfs:.0f})",
        )
    cache = cache if cache is not None else shared_cache(settings)

    length = len(vocals)
    if voice.backend == "world":
        profile = world.VoiceProfile.load(voice.model)
        log.info("converting with the WORLD fallback voice", backend=world.BACKEND)
        # WORLD's analysis: FCPE + StoneMask (+ DIO where FCPE hears nothing) unless a WORLD
        # tracker is asked for by name.
        f0_method = params.f0_method if params.f0_method in WORLD_F0_METHODS else "fcpe"
        world_audio, report = world.convert_world_with_report(
            vocals,
            sr,
            profile,
            params.f0_up_key if key is None else key,
            key is None,
            progress,
            f0_method,
            scratch=out_path.parent,
        )
        semitones, key_method = report.semitones, report.key_method
        converted: Signal = fit(world_audio, length)
    else:
        if key is not None:
            params = params.model_copy(update={"f0_up_key": key})
        semitones, key_method = params.f0_up_key, "requested"
        converted, out_sr = _convert_rvc(
            vocals_path, voice, params, settings, models, sr, progress, cache, on_disk
        )
        converted = fit(resample_signal(converted, out_sr, sr, on_disk), length)

    write_sound_file(out_path, converted, sr)
    for signal in (vocals, converted):
        if isinstance(signal, DiskSignal):
            signal.close()
    progress(1.0, "vocals converted")
    return ConversionResult(
        path=out_path,
        backend=voice.backend,
        sample_rate=sr,
        duration_s=length / sr,
        semitones=semitones,
        key_method=key_method,
    )


def measure_quality(
    vocals_path: Path,
    result: ConversionResult,
    dataset_files: Sequence[Path],
    backing_converted: bool = False,
) -> ConversionQuality:
    """The quality report of a conversion (``dataset_files``: the voice's recordings; empty
    when the job named a model, and then there is no similarity to report)."""
    from agents.voice import quality
    from foundation.audio import load_audio

    sr = quality.ANALYSIS_SR
    voice = (
        quality.speaker_embedding([(load_audio(path, sr), sr) for path in dataset_files])
        if dataset_files
        else None
    )
    figures = quality.measure(
        load_audio(vocals_path, sr), load_audio(result.path, sr), sr, result.semitones, voice
    )
    return ConversionQuality(
        **figures.__dict__,
        key_semitones=result.semitones,
        key_method=result.key_method,  # type: ignore[arg-type]
        backing_converted=backing_converted,
    )
