"""The trainer stage as one plain function: a voice dataset in, a voice model out.

With a HuBERT/ContentVec checkpoint configured (``SINGTOME_HUBERT_PATH``) this is RVC v2
training: preprocessing → pitch + content features → synthesizer training → faiss index. Without
one (a fresh machine: no weights can be bundled) it learns the WORLD fallback voice profile from
the same dataset instead, and says so: ``kind`` is ``'world'``, never ``'rvc'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from agents.trainer.profile import learn_profile_file
from foundation.errors import StageError
from foundation.logging import get_logger
from foundation.progress import ProgressFn
from schemas.events import VoiceOptions
from schemas.vocabulary import F0Method, SampleRate, VoiceKind
from streams.outputs import OutputParams
from streams.settings import AudioSettings, ModelsSettings, TrainerSettings

log = get_logger(__name__)


MODEL_FILE = "model.pth"
INDEX_FILE = "model.index"
PROFILE_FILE = "profile.npz"


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class VoiceTrainingConfig:
    """What decides the trained voice (part of the cache key, with the dataset bytes). The job's
    choices (sample rate, pitch method, epochs, batch size) come from :class:`VoiceOptions`,
    whose defaults are the product's: :meth:`from_options`."""

    sample_rate: SampleRate
    version: Literal["v1", "v2"] = "v2"
    f0_method: F0Method
    epochs: int
    batch_size: int
    pretrained_g: str | None = None
    pretrained_d: str | None = None
    model_size: Literal["full", "tiny"] = "full"
    seed: int = 1234

    @classmethod
    def from_options(cls, voice: VoiceOptions, **fields: Any) -> VoiceTrainingConfig:
        """The config for the job's voice options; ``fields`` set the rest (``model_size``,
        ``pretrained_g`` ...)."""
        return cls(
            sample_rate=voice.sample_rate,
            f0_method=voice.f0_method,
            epochs=voice.epochs,
            batch_size=voice.batch_size,
            **fields,
        )


class VoiceParams(OutputParams):
    """What decides the trained voice besides the dataset's bytes and the code version."""

    kind: VoiceKind
    training: VoiceTrainingConfig | None = None  # RVC only: a profile depends on the audio alone

    @classmethod
    def of(
        cls, config: VoiceTrainingConfig, kind: VoiceKind, rmvpe_path: Path | None = None
    ) -> VoiceParams:
        if kind == "world":
            return cls(kind="world")
        from agents.voice.f0 import resolve_f0_method

        # The method that actually runs decides the model, not the one asked for.
        method = resolve_f0_method(config.f0_method, rmvpe_path)
        return cls(kind="rvc", training=replace(config, f0_method=method))


@dataclass
class TrainedVoice:
    kind: VoiceKind
    files: dict[str, Path]  # "model" (the .pth or profile.npz) and, for RVC, "index"
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "file: reason" for unreadable files


def voice_kind(models: ModelsSettings) -> VoiceKind:
    return "rvc" if models.hubert_path is not None else "world"


def readable_audio(files: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The files ffmpeg can decode, and a 'name: reason' line for each one it cannot."""
    from foundation.audio import load_audio

    good: list[Path] = []
    skipped: list[str] = []
    for path in sorted(files):
        try:
            audio = load_audio(path, 16000)
        except Exception as exc:  # any decoder failure means: not usable audio
            skipped.append(f"{path.name}: {str(exc).splitlines()[0][:200] or type(exc).__name__}")
            continue
        if audio.size == 0:
            skipped.append(f"{path.name}: no samples")
            continue
        good.append(path)
    for line in skipped:
        log.warning("dataset file skipped", reason=line)
    if not good:
        raise StageError(
            "dataset_empty",
            "the voice dataset has no readable audio"
            + (
                f" ({len(skipped)} unreadable file(s): {'; '.join(skipped[:3])})" if skipped else ""
            ),
        )
    return good, skipped


def train_voice(
    dataset_files: Sequence[Path],
    out_dir: Path,
    config: VoiceTrainingConfig,
    settings: TrainerSettings | None = None,
    progress: ProgressFn = _no_progress,
    *,
    models: ModelsSettings | None = None,
    audio: AudioSettings | None = None,
) -> TrainedVoice:
    """Train the voice heard in ``dataset_files`` into ``out_dir``. ``settings`` (precision),
    ``models`` (content encoder, pitch and pretrained files, device) and ``audio`` (silence)
    default to their defaults."""
    models = models or ModelsSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = readable_audio(dataset_files)
    if voice_kind(models) == "world":
        log.info(
            "no content encoder (`singtome models pull hubert_base.pt` or SINGTOME_HUBERT_PATH): "
            "learning the WORLD fallback voice profile, not an RVC model"
        )
        profile = learn_profile_file(files, out_dir, progress)
        return TrainedVoice("world", {"model": profile}, skipped=skipped)
    result = _train_rvc(
        files,
        out_dir,
        config,
        settings or TrainerSettings(),
        models,
        (audio or AudioSettings()).silence_dbfs,
        progress,
    )
    result.skipped = skipped
    return result


def _train_rvc(
    files: list[Path],
    out_dir: Path,
    config: VoiceTrainingConfig,
    settings: TrainerSettings,
    models: ModelsSettings,
    silence_dbfs: float,
    progress: ProgressFn,
) -> TrainedVoice:
    import shutil

    from agents.trainer.features import extract_features
    from agents.trainer.preprocess import preprocess_dataset
    from agents.trainer.train import TrainConfig, train_model
    from agents.voice.configs import SAMPLE_RATES
    from agents.voice.content import load_content_encoder
    from agents.voice.f0 import resolve_f0_method
    from agents.voice.index import build_index, load_training_features, save_index

    assert models.hubert_path is not None
    exp_dir = out_dir / "exp"

    def phase(start: float, end: float) -> ProgressFn:
        return lambda f, message: progress(start + (end - start) * f, message)

    report = preprocess_dataset(
        files,
        exp_dir,
        SAMPLE_RATES[config.sample_rate],
        phase(0.0, 0.1),
        silence_dbfs=silence_dbfs,
    )
    device = _device(models)
    log.info(
        "training an RVC v2 voice model",
        content_encoder=str(models.hubert_path),
        rmvpe=str(models.rmvpe_path) if models.rmvpe_path else None,
        pretrained_dir=str(models.pretrained_dir) if models.pretrained_dir else None,
        device=device,
    )
    encoder = load_content_encoder(models.hubert_path, device=device)
    extract_features(
        exp_dir,
        resolve_f0_method(config.f0_method, models.rmvpe_path),
        encoder,
        config.version,
        phase(0.1, 0.25),
        rmvpe_path=models.rmvpe_path,
        device=device,
        crepe_model=models.crepe_model,
    )
    pretrained_g, pretrained_d = _pretrained(config, models.pretrained_dir)
    result = train_model(
        exp_dir,
        TrainConfig(
            sample_rate=config.sample_rate,  # type: ignore[arg-type]
            version=config.version,
            f0=True,
            epochs=config.epochs,
            batch_size=config.batch_size,
            pretrained_g=pretrained_g,
            pretrained_d=pretrained_d,
            seed=config.seed,
            device=models.device,
            model_size=config.model_size,
            precision=settings.precision,
        ),
        phase(0.25, 0.95),
    )
    progress(0.95, "building the retrieval index")
    feature_dir = exp_dir / ("3_feature768" if config.version == "v2" else "3_feature256")
    index = build_index(load_training_features(feature_dir))
    model = shutil.copyfile(result.model_path, out_dir / MODEL_FILE)
    index_path = save_index(index, out_dir / INDEX_FILE)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    metrics.update(segments=float(report.segments), dataset_s=float(report.seconds))
    progress(1.0, "voice model trained")
    return TrainedVoice("rvc", {"model": Path(model), "index": index_path}, metrics)


def _device(models: ModelsSettings) -> str:
    from foundation.device import resolve_device

    return str(resolve_device(models.device))


def _pretrained(
    config: VoiceTrainingConfig, folder: Path | None
) -> tuple[Path | None, Path | None]:
    """Explicit paths win; else RVC's public file names looked up in SINGTOME_PRETRAINED_DIR."""
    g = Path(config.pretrained_g) if config.pretrained_g else None
    d = Path(config.pretrained_d) if config.pretrained_d else None
    if folder is not None and (g is None or d is None):
        g = g or _existing(folder / f"f0G{config.sample_rate}.pth")
        d = d or _existing(folder / f"f0D{config.sample_rate}.pth")
    for path in (g, d):
        if path is not None and not path.is_file():
            raise StageError("model_not_found", f"pretrained weights not found: {path}")
    return g, d


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None
