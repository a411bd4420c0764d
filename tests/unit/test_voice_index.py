"""The faiss retrieval index: RVC's sizing, neighbours, file round trip and the feature blend."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from agents.voice import index as voice_index
from agents.voice.index import (
    blend_features,
    build_index,
    index_filename,
    ivf_list_count,
    ivf_lists,
    load_index,
    load_training_features,
    save_index,
)
from foundation.errors import StageError


def clustered(n_per: int = 60, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four tight, far-apart clusters; returns (points, cluster centres)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(4, dim, dtype=np.float32) * 10.0
    points = np.concatenate([c + 0.1 * rng.standard_normal((n_per, dim)) for c in centres])
    return points.astype(np.float32), centres


def test_rvc_ivf_sizing():
    assert ivf_list_count(10) == 1  # N // 39 == 0: still one list
    assert ivf_list_count(240) == 6  # min(16 * sqrt(240) = 247, 240 // 39 = 6)
    assert ivf_list_count(1_000_000) == 16_000  # min(16 * 1000, 25 641)
    assert index_filename(256, "alice", "v2") == "added_IVF256_Flat_nprobe_1_alice_v2.index"


def test_neighbours_come_from_the_query_cluster():
    points, centres = clustered()
    index = build_index(points)
    assert index.ntotal == len(points) and index.d == 16
    assert ivf_lists(index) == ivf_list_count(len(points))
    rng = np.random.default_rng(5)
    queries = centres + 0.3 * rng.standard_normal(centres.shape).astype(np.float32)
    _, labels = index.search(queries, 8)
    big_npy = index.reconstruct_n(0, index.ntotal)
    for cluster, row in enumerate(labels):
        found = big_npy[row[row >= 0]]
        assert len(found) > 0
        nearest_centre = np.argmin(((found[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        assert np.all(nearest_centre == cluster)


def test_blend_matches_rvc_weights_by_hand():
    vectors = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=np.float32)
    flat = faiss.IndexFlatL2(2)
    flat.add(vectors)
    query = np.array([[0.5, 0.0]], dtype=np.float32)
    # faiss returns squared distances 0.25 and 2.25 for the two nearest; RVC weighs them by
    # (1 / score)^2 = 16 and 1 / 5.0625, normalised.
    w0, w1 = 16.0, 1.0 / 5.0625
    retrieved = (w0 * vectors[0] + w1 * vectors[1]) / (w0 + w1)
    expected = 0.75 * retrieved + 0.25 * query[0]
    out = blend_features(query, flat, vectors, index_rate=0.75, k=2)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-7)
    # index_rate 0 keeps the features; 1 takes the retrieved ones.
    np.testing.assert_array_equal(blend_features(query, flat, vectors, 0.0, k=2), query)
    np.testing.assert_allclose(
        blend_features(query, flat, vectors, 1.0, k=2)[0], retrieved, rtol=1e-6
    )


def test_blend_pulls_features_to_the_trained_voice():
    points, centres = clustered()
    index = build_index(points)
    big_npy = index.reconstruct_n(0, index.ntotal)
    rng = np.random.default_rng(7)
    feats = (centres[[0, 2, 3]] + rng.standard_normal((3, 16))).astype(np.float32)
    blended = blend_features(feats, index, big_npy, index_rate=1.0)
    before = np.linalg.norm(feats - centres[[0, 2, 3]], axis=1)
    after = np.linalg.norm(blended - centres[[0, 2, 3]], axis=1)
    assert np.all(after < 0.5 * before)


def test_exact_match_and_short_lists_are_safe():
    vectors = np.array([[1.0, 1.0], [3.0, 3.0]], dtype=np.float32)
    flat = faiss.IndexFlatL2(2)
    flat.add(vectors)
    out = blend_features(vectors[:1].copy(), flat, vectors, index_rate=1.0, k=8)
    np.testing.assert_allclose(out, vectors[:1])
    assert np.all(np.isfinite(out))


def test_save_load_round_trip_reconstructs_the_vectors(tmp_path):
    points, _ = clustered(n_per=40)
    index = build_index(points)
    path = save_index(index, tmp_path / index_filename(ivf_lists(index), "alice", "v2"))
    loaded, big_npy = load_index(path)
    assert big_npy.shape == points.shape
    # Same set of vectors (the index shuffles them).
    np.testing.assert_allclose(
        big_npy[np.lexsort(big_npy.T)], points[np.lexsort(points.T)], rtol=0, atol=0
    )
    _, l1 = index.search(points[:5], 4)
    _, l2 = loaded.search(points[:5], 4)
    np.testing.assert_array_equal(l1, l2)


def test_dimension_mismatch_is_model_mismatch():
    points, _ = clustered()
    index = build_index(points)
    big_npy = index.reconstruct_n(0, index.ntotal)
    with pytest.raises(StageError) as err:
        blend_features(np.zeros((3, 8), np.float32), index, big_npy, 0.5)
    assert err.value.code == "model_mismatch"


def test_large_sets_are_reduced_with_kmeans_first(monkeypatch):
    monkeypatch.setattr(voice_index, "KMEANS_ABOVE", 200)
    monkeypatch.setattr(voice_index, "KMEANS_CENTROIDS", 40)
    points, _ = clustered(n_per=60)
    index = build_index(points)
    assert index.ntotal == 40 and ivf_lists(index) == ivf_list_count(40)


def test_missing_and_corrupt_files_and_feature_loading(tmp_path):
    with pytest.raises(StageError) as err:
        load_index(tmp_path / "none.index")
    assert err.value.code == "model_not_found"
    (tmp_path / "bad.index").write_bytes(b"junk" * 10)
    with pytest.raises(StageError) as err:
        load_index(tmp_path / "bad.index")
    assert err.value.code == "invalid_model"
    features = tmp_path / "3_feature768"
    features.mkdir()
    np.save(features / "0_1.npy", np.ones((3, 4), np.float32))
    np.save(features / "0_0.npy", np.zeros((2, 4), np.float32))
    stacked = load_training_features(features)
    assert stacked.shape == (5, 4) and stacked[:2].sum() == 0  # name order: 0_0 first


def test_empty_neighbour_slots_get_no_weight():
    rng = np.random.default_rng(3)
    lonely = np.array([[100.0, 100.0]], dtype=np.float32)
    crowd = rng.standard_normal((60, 2)).astype(np.float32)
    vectors = np.concatenate([lonely, crowd])
    ivf = faiss.index_factory(2, "IVF2,Flat")
    ivf.train(vectors)
    ivf.add(vectors)
    faiss.extract_index_ivf(ivf).nprobe = 1
    query = np.array([[99.0, 100.0]], dtype=np.float32)
    _, labels = ivf.search(query, 8)
    assert (labels < 0).any()  # the probed list holds one vector: faiss pads with -1
    out = blend_features(query, ivf, vectors, index_rate=1.0, k=8)
    np.testing.assert_allclose(out[0], lonely[0])
