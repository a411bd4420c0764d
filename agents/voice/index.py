"""The retrieval index of a voice: a faiss ``IVF{n},Flat`` index over its training features.

At inference each content-feature frame is replaced in part by a weighted mean of its nearest
training frames (``index_rate``), which pulls the timbre towards the trained voice. Sizing and
blending follow RVC WebUI's ``train_index`` and inference pipeline, so indexes trained by RVC
WebUI or Applio load here and ours load there.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from foundation.errors import StageError
from foundation.logging import get_logger

log = get_logger(__name__)

KMEANS_ABOVE = 200_000
"""More training frames than this are first reduced to :data:`KMEANS_CENTROIDS` k-means centres."""
KMEANS_CENTROIDS = 10_000
NPROBE = 1
ADD_BATCH = 8192


def ivf_list_count(n_vectors: int) -> int:
    """RVC's IVF size: ``min(16 * sqrt(N), N // 39)`` (faiss wants >= 39 points per list),
    at least 1."""
    return max(1, min(int(16 * np.sqrt(n_vectors)), n_vectors // 39))


def index_filename(n_ivf: int, exp_name: str, version: str) -> str:
    """RVC's file name for an index with vectors added, e.g.
    ``added_IVF256_Flat_nprobe_1_alice_v2.index``."""
    return f"added_IVF{n_ivf}_Flat_nprobe_{NPROBE}_{exp_name}_{version}.index"


def ivf_lists(index: faiss.Index) -> int:
    """The number of inverted lists (the ``n`` of ``IVF{n}``) of an IVF index."""
    return int(faiss.extract_index_ivf(index).nlist)


def load_training_features(feature_dir: Path) -> np.ndarray:
    """All ``.npy`` feature files of a folder (``3_feature768/``), in name order, stacked."""
    files = sorted(Path(feature_dir).glob("*.npy"))
    if not files:
        raise StageError("dataset_too_short", f"no content features in {feature_dir}")
    return np.concatenate([np.load(f, allow_pickle=False) for f in files], axis=0)


def build_index(features: np.ndarray, *, seed: int = 0) -> faiss.Index:
    """Train and fill an ``IVF{n},Flat`` index (nprobe 1) on ``(N, D)`` features.

    As RVC: the frames are shuffled, reduced with mini-batch k-means to 10 000 centres when
    there are more than 200 000 of them, and the index holds the (reduced) frames themselves.
    ``seed`` makes the shuffle and k-means repeatable, so the same features give the same index.
    """
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise StageError("dataset_too_short", f"no features to index (shape {feats.shape})")
    if not np.all(np.isfinite(feats)):
        raise StageError("invalid_model", "features to index contain NaN or infinity")
    rng = np.random.default_rng(seed)
    feats = feats[rng.permutation(feats.shape[0])]
    if feats.shape[0] > KMEANS_ABOVE:
        from sklearn.cluster import MiniBatchKMeans

        log.info("index_kmeans", frames=feats.shape[0], centroids=KMEANS_CENTROIDS)
        kmeans = MiniBatchKMeans(
            n_clusters=KMEANS_CENTROIDS,
            batch_size=256 * (os.cpu_count() or 1),
            compute_labels=False,
            init="random",
            random_state=seed,
            n_init=1,
        )
        feats = kmeans.fit(feats).cluster_centers_.astype(np.float32)
    feats = np.ascontiguousarray(feats)
    n_ivf = ivf_list_count(feats.shape[0])
    index = faiss.index_factory(feats.shape[1], f"IVF{n_ivf},Flat")
    faiss.extract_index_ivf(index).nprobe = NPROBE
    index.train(feats)
    for start in range(0, feats.shape[0], ADD_BATCH):
        index.add(feats[start : start + ADD_BATCH])
    log.info("index_built", vectors=int(index.ntotal), dim=int(index.d), n_ivf=n_ivf)
    return index


def save_index(index: faiss.Index, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def load_index(path: Path) -> tuple[faiss.Index, np.ndarray]:
    """Read an index and reconstruct the vectors it holds (RVC's ``big_npy``), ``(ntotal, D)``."""
    path = Path(path)
    if not path.is_file():
        raise StageError("model_not_found", f"index not found: {path}")
    try:
        index = faiss.read_index(str(path))
        big_npy = index.reconstruct_n(0, index.ntotal)
    except RuntimeError as exc:
        raise StageError("invalid_model", f"{path.name} is not a faiss index: {exc}") from None
    return index, np.asarray(big_npy, dtype=np.float32)


def blend_features(
    feats: np.ndarray,
    index: faiss.Index,
    big_npy: np.ndarray,
    index_rate: float,
    k: int = 8,
) -> np.ndarray:
    """RVC's retrieval blend of ``(F, D)`` content features.

    Each frame's ``k`` nearest indexed frames are averaged with weights ``1 / d**2`` normalised
    to sum 1, where ``d`` is the distance faiss returns (for a Flat index, a *squared* L2
    distance: RVC's ``np.square(1 / score)``); the result is
    ``index_rate * retrieved + (1 - index_rate) * feats``.

    Two guards RVC lacks: an exact match (d = 0) takes the whole weight instead of dividing by
    zero, and the empty slots faiss returns (label -1, when the probed list holds fewer than ``k``
    vectors) get no weight instead of pointing at the last vector; a frame with no neighbour at
    all is kept as it is.
    """
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be (frames, dim), got {feats.shape}")
    dim = feats.shape[1]
    if int(index.d) != dim or big_npy.ndim != 2 or big_npy.shape[1] != dim:
        raise StageError(
            "model_mismatch",
            f"features are {dim}-d but the index holds {index.d}-d vectors "
            f"(a v1 index with a v2 model, or the reverse?)",
        )
    if index_rate <= 0 or feats.shape[0] == 0 or index.ntotal == 0:
        return feats.copy()
    k = max(1, min(int(k), int(index.ntotal)))
    distance, label = index.search(np.ascontiguousarray(feats), k)
    found = label >= 0
    distance = np.asarray(distance, dtype=np.float64)
    exact = found & (distance <= 0.0)
    weight = np.where(found, 1.0 / np.square(np.maximum(distance, 1e-30)), 0.0)
    # Frames with an exact match: weight only the exact matches (equally).
    has_exact = exact.any(axis=1)
    weight[has_exact] = exact[has_exact].astype(np.float64)
    total = weight.sum(axis=1, keepdims=True)
    has_neighbour = total[:, 0] > 0
    weight = weight / np.where(total > 0, total, 1.0)
    neighbours = big_npy[np.where(found, label, 0)].astype(np.float64)  # (F, k, D)
    retrieved = np.einsum("fk,fkd->fd", weight, neighbours)
    retrieved[~has_neighbour] = feats[~has_neighbour]
    blended = index_rate * retrieved + (1.0 - index_rate) * feats.astype(np.float64)
    return blended.astype(np.float32)
