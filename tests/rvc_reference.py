"""The reference RVC implementation the oracle tests compare against: ``rvc==0.3.5`` from PyPI.

It is RVC-Project's library form of the classic WebUI pipeline (MIT). It is installed without its
dependencies (``pip install --no-deps rvc==0.3.5``: they pin old torch/numpy and pull fairseq);
of what it imports, the modules used here need only packages the project already has plus
``praat-parselmouth``. Importing fails loudly when it is missing: the oracle tests are part of the
default run and must not turn into skips on a machine set up wrongly.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

# rvc/lib/infer_pack/models.py: the synthesizer classes of every public RVC checkpoint.
from rvc.lib.infer_pack import models as reference_models

# rvc/modules/vc/pipeline.py: the inference pipeline (f0 post-processing, change_rms, the index
# blend, protect, piecewise conversion).
from rvc.modules.vc import pipeline as reference_pipeline

from agents.voice.configs import SynthesizerConfig
from agents.voice.synthesizer import Synthesizer


def _load_by_path(name: str, relative: str) -> Any:
    """A module of the package that a same-named module shadows (``infer_pack/modules.py`` hides
    the ``infer_pack/modules/`` folder), loaded from its file."""
    import importlib.util
    from pathlib import Path

    import rvc

    path = Path(rvc.__file__).parent / relative
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# rvc/lib/infer_pack/modules/F0Predictor/HarvestF0Predictor.py: ``interpolate_f0``, the unvoiced
# filling RVC's current pipeline applies to every tracker's output.
# Its own import of the base class goes through the shadowed path, so the base is registered
# under that name first.
def _load_harvest_predictor() -> Any:
    import sys

    folder = "lib/infer_pack/modules/F0Predictor"
    base_name = "rvc.lib.infer_pack.modules.F0Predictor.F0Predictor"
    if base_name not in sys.modules:
        sys.modules[base_name] = _load_by_path(base_name, f"{folder}/F0Predictor.py")
    return _load_by_path("rvc_harvest_f0_predictor", f"{folder}/HarvestF0Predictor.py")


harvest_predictor = _load_harvest_predictor()

REFERENCE_CLASSES: dict[tuple[str, bool], Any] = {
    ("v1", True): reference_models.SynthesizerTrnMs256NSFsid,
    ("v1", False): reference_models.SynthesizerTrnMs256NSFsid_nono,
    ("v2", True): reference_models.SynthesizerTrnMs768NSFsid,
    ("v2", False): reference_models.SynthesizerTrnMs768NSFsid_nono,
}


def reference_synthesizer(ours: Synthesizer, config: SynthesizerConfig, version: str) -> Any:
    """RVC's class for this variant, built from the public config list as RVC's loader does
    (``SynthesizerTrnMs*(*cpt["config"], is_half=...)``) and holding exactly ``ours``' weights.

    The list's segment slot is the training segment (RVC's trainer passes it there; exported
    checkpoints hold a placeholder), so a training pass slices the same frames as ours."""
    cls = REFERENCE_CLASSES[(version, ours.use_f0)]
    values = config.to_public_list()
    values[1] = config.segment_frames
    reference = cls(*values, is_half=False)
    state = ours.state_dict()
    if not ours.has_posterior:  # RVC always builds enc_q; inference never runs it
        state = {**reference.state_dict(), **state}
    reference.load_state_dict(state, strict=True)
    return reference.eval()


def reference_infer(reference: Any, *args: torch.Tensor, f0: bool) -> torch.Tensor:
    """RVC's ``net_g.infer`` call as its pipeline makes it (the no-f0 classes take no pitch)."""
    phone, lengths, pitch, nsff0, sid = args
    with torch.no_grad():
        if f0:
            return reference.infer(phone, lengths, pitch, nsff0, sid)[0]
        return reference.infer(phone, lengths, sid)[0]


def pipeline_config(device: str = "cpu") -> SimpleNamespace:
    """RVC's CPU / fp32 windows (x_pad 1, x_query 6, x_center 38, x_max 41)."""
    return SimpleNamespace(x_pad=1, x_query=6, x_center=38, x_max=41, is_half=False, device=device)


def reference_pipeline_for(tgt_sr: int) -> Any:
    return reference_pipeline.Pipeline(tgt_sr, pipeline_config())


class ReferenceFixedF0:
    """Stands in for RVC's RMVPE model object (``infer_from_audio``), so the reference pipeline
    post-processes exactly the f0 track our pipeline gets from the same extractor."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor

    def infer_from_audio(self, audio: np.ndarray, thred: float = 0.03) -> np.ndarray:
        return np.asarray(self.extractor.compute(np.asarray(audio, dtype=np.float32)), np.float64)


class ReferenceContentModel(torch.nn.Module):
    """The fairseq HuBERT interface RVC's pipeline calls (``extract_features`` + ``final_proj``),
    wrapped around one of our content encoders, so both pipelines see the same features."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.version = "v2"

    def extract_features(
        self, source: torch.Tensor, padding_mask: torch.Tensor, output_layer: int
    ) -> tuple[torch.Tensor, None]:
        self.version = "v1" if output_layer == 9 else "v2"
        features = torch.as_tensor(self.encoder.extract(source[0], self.version)).float()
        return features.unsqueeze(0), None

    def final_proj(self, features: torch.Tensor) -> torch.Tensor:
        # Our v1 extraction already projects to 256-d; RVC projects afterwards.
        return features
