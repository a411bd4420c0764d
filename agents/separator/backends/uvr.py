"""UVR models (MDX-Net .onnx, VR .pth, Demucs .yaml, MDXC/Roformer .ckpt) through audio-separator.

Models are looked up in ``<model_dir>/uvr`` and never downloaded. audio-separator resolves a model
by its file name through ``download_checks.json`` and its metadata by hash through
``vr_model_data.json`` / ``mdx_model_data.json``, all read from that directory;
``scripts/seed_uvr_models.py`` builds them from the ``uvr-resources`` package. Where
audio-separator would fetch a missing file, :class:`_OfflineSeparator` refuses instead.

audio-separator works on files, so each chunk goes through a temp WAV; the stage does the chunking.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from agents.separator.backends.base import SAMPLE_RATE, Stems
from foundation.errors import StageError
from foundation.levels import fit_length
from foundation.logging import get_logger

log = get_logger(__name__)

UVR_SUBDIR = "uvr"
MODEL_SUFFIXES = (".onnx", ".pth", ".ckpt", ".yaml", ".th")
# What audio-separator reads from the model directory besides the model itself.
CATALOGUE_FILES = ("download_checks.json", "vr_model_data.json", "mdx_model_data.json")
_STEM_IN_NAME = re.compile(r"_\(([^)]+)\)_")


def uvr_model_dir(model_dir: Path) -> Path:
    return Path(model_dir) / UVR_SUBDIR


def is_uvr_model(name: str) -> bool:
    return name.lower().endswith(MODEL_SUFFIXES)


def check_model_files(model_file: str, directory: Path) -> None:
    """Raise ``model_not_found`` naming the file and directory when anything needed is absent."""
    if Path(model_file).name != model_file:
        raise StageError(
            "model_not_found", f"UVR model must be a bare file name, got {model_file!r}"
        )
    if not (directory / model_file).is_file():
        raise StageError(
            "model_not_found",
            f"UVR model {model_file!r} is not in {directory} (models are never downloaded: "
            "copy the file there)",
        )
    absent = [name for name in CATALOGUE_FILES if not (directory / name).is_file()]
    if absent:
        raise StageError(
            "model_not_found",
            f"{', '.join(absent)} missing from {directory}: seed the directory with "
            "`python scripts/seed_uvr_models.py <dir>`",
        )


def _offline_separator_class() -> type:
    from audio_separator.separator import Separator

    class _OfflineSeparator(Separator):  # type: ignore[misc]
        """audio-separator with every download replaced by a check that the file is present."""

        def download_file_if_not_exists(self, url: str, output_path: str) -> None:
            if not Path(output_path).is_file():
                raise StageError(
                    "model_not_found",
                    f"{Path(output_path).name} is needed by this model but is not in "
                    f"{Path(output_path).parent} (downloads are disabled; source: {url})",
                )

    return _OfflineSeparator


class UvrBackend:
    """One UVR model; ``separate`` returns the model's own stem names ('Vocals', 'No Noise')."""

    def __init__(self, model_file: str, model_dir: Path) -> None:
        self.name = model_file
        self.directory = uvr_model_dir(model_dir)
        check_model_files(model_file, self.directory)
        # One audio-separator instance holds per-file state: one chunk at a time.
        self._lock = threading.Lock()
        self._workdir = Path(tempfile.mkdtemp(prefix="singtome-uvr-"))
        try:
            self._separator = self._load()
        except BaseException:
            self.close()
            raise
        instance = self._separator.model_instance
        primary = str(instance.primary_stem_name)
        secondary = str(instance.secondary_stem_name)
        self.stems: tuple[str, ...] = (primary, secondary)

    def _load(self) -> Any:
        separator_cls = _offline_separator_class()
        # audio-separator turns off all Python warnings process-wide when its log level is above
        # DEBUG; keep that change inside this block.
        with warnings.catch_warnings():
            separator = separator_cls(
                log_level=logging.ERROR,
                model_file_dir=str(self.directory),
                output_dir=str(self._workdir),
                output_format="WAV",
                # No per-chunk level changes: normalising each chunk would make steps at joins.
                normalization_threshold=1.0,
                amplification_threshold=0.0,
                sample_rate=SAMPLE_RATE,
                use_soundfile=True,
            )
            try:
                separator.load_model(self.name)
            except StageError:
                raise
            except ValueError as exc:
                # Not in the catalogue, or a hash with no metadata: not a model we can run.
                raise StageError("invalid_model", f"UVR model {self.name!r}: {exc}") from None
            except FileNotFoundError as exc:
                raise StageError("model_not_found", f"UVR model {self.name!r}: {exc}") from None
        log.info(
            "uvr model loaded",
            model=self.name,
            stems=[
                separator.model_instance.primary_stem_name,
                separator.model_instance.secondary_stem_name,
            ],
        )
        return separator

    def separate(self, audio: np.ndarray) -> Stems:
        with self._lock:
            return self._separate(audio)

    def _separate(self, audio: np.ndarray) -> Stems:
        frames = len(audio)
        call_dir = Path(tempfile.mkdtemp(dir=self._workdir))
        try:
            chunk = call_dir / "chunk.wav"
            # audio-separator writes stems at the input's bit depth but reads float WAVs as
            # 16-bit; 32-bit integer keeps full precision (overs are clipped first).
            sf.write(chunk, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_32")
            self._separator.output_dir = str(call_dir)
            self._separator.model_instance.output_dir = str(call_dir)
            with warnings.catch_warnings():
                self._separator.separate(str(chunk))
            written: Stems = {}
            for path in call_dir.glob("chunk_(*)_*.wav"):
                match = _STEM_IN_NAME.search(path.name)
                if match:
                    data, _ = sf.read(path, dtype="float32", always_2d=True)
                    if data.shape[1] == 1:
                        data = np.repeat(data, 2, axis=1)
                    written[match.group(1)] = fit_length(data[:, :2], frames)
        finally:
            shutil.rmtree(call_dir, ignore_errors=True)
        if not written:
            raise RuntimeError(f"UVR model {self.name} wrote no stems")
        # The model's own order (primary stem first), then any extra stems (multi-stem models).
        order = [n for n in self.stems if n in written] + sorted(set(written) - set(self.stems))
        self.stems = tuple(order)
        return {name: written[name] for name in order}

    def close(self) -> None:
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __del__(self) -> None:
        self.close()


def create(model: str, model_dir: Path, device: str) -> UvrBackend:
    # audio-separator picks its own execution provider (CUDA when onnxruntime/torch see it).
    return UvrBackend(model, model_dir)
