"""The FAISS part: flat, HNSW and IVF-PQ indexes, built, saved, loaded back and searched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from omnirag.index import Collection, Document, IndexConfig
from omnirag.index.ids import int_id

DIM = 64
N = 2000


@pytest.fixture(scope="module")
def vectors(unit_vectors: Callable) -> np.ndarray:
    return unit_vectors(N, DIM, seed=42)


@pytest.fixture(scope="module")
def queries(unit_vectors: Callable) -> np.ndarray:
    return unit_vectors(20, DIM, seed=43)


@pytest.fixture(scope="module")
def by_type(
    tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray, build_collection: Callable
) -> dict[str, Collection]:
    docs = [Document(f"v{i}", f"vector {i}", {"i": i}, vectors[i], f"h{i}") for i in range(N)]
    root = tmp_path_factory.mktemp("dense")
    configs = {
        "flat": IndexConfig(type="flat"),
        "hnsw": IndexConfig(type="hnsw", hnsw_m=16, hnsw_ef_construction=100, hnsw_ef_search=64),
        "ivfpq": IndexConfig(type="ivfpq", pq_m=8, ivf_nlist=256, ivf_nprobe=16),
    }
    return {kind: build_collection(root, kind, docs, DIM, cfg) for kind, cfg in configs.items()}


def top_ids(coll: Collection, qv: np.ndarray, k: int = 10) -> list[str]:
    return [h.id for h in coll.search(vector=qv, k=k, mode="dense")]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_every_index_type_is_searchable_after_save_and_load(
    by_type: dict[str, Collection], vectors: np.ndarray, kind: str
) -> None:
    coll = by_type[kind]
    assert coll.manifest.index_built == kind
    assert coll.manifest.index.type == kind
    assert coll.index.ntotal == N
    found = 0
    for i in range(0, N, 100):  # each document's own vector finds it first
        hits = coll.search(vector=vectors[i], k=10, mode="dense")
        assert len(hits) == 10
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        found += hits[0].id == f"v{i}"
    assert found >= (18 if kind == "ivfpq" else 20)


def test_flat_search_is_exact(
    by_type: dict[str, Collection], vectors: np.ndarray, queries: np.ndarray
) -> None:
    for qv in queries[:5]:
        scores = vectors @ qv
        best = np.argsort(-scores)[:10]
        hits = by_type["flat"].search(vector=qv, k=10, mode="dense")
        assert [h.id for h in hits] == [f"v{i}" for i in best]
        np.testing.assert_allclose([h.score for h in hits], scores[best], atol=1e-5)


def test_hnsw_top10_agrees_with_flat(by_type: dict[str, Collection], queries: np.ndarray) -> None:
    overlaps = [
        len(set(top_ids(by_type["hnsw"], qv)) & set(top_ids(by_type["flat"], qv))) / 10 for qv in queries
    ]
    assert np.mean(overlaps) >= 0.9
    assert min(overlaps) >= 0.6


def test_ivfpq_is_approximate_but_close(
    by_type: dict[str, Collection], vectors: np.ndarray, queries: np.ndarray
) -> None:
    overlaps = [
        len(set(top_ids(by_type["ivfpq"], qv, 10)) & set(top_ids(by_type["flat"], qv, 10))) / 10
        for qv in queries
    ]
    # Random 64-d vectors in 8 bytes each are the hardest case for PQ; still far better than chance.
    assert np.mean(overlaps) >= 0.2
    # Scores are estimates of the inner product.
    for i in (3, 333, 1333):
        hit = by_type["ivfpq"].search(vector=vectors[i], k=1, mode="dense")[0]
        assert hit.score == pytest.approx(1.0, abs=0.25)


def test_index_parameters_survive_save_and_load(by_type: dict[str, Collection]) -> None:
    hnsw = faiss.downcast_index(by_type["hnsw"].index.index)
    assert isinstance(hnsw, faiss.IndexHNSWFlat)
    assert hnsw.hnsw.efSearch == 64
    ivf = faiss.extract_index_ivf(by_type["ivfpq"].index)
    assert ivf.nlist == N // 39  # lowered from 256 for a small collection
    assert ivf.nprobe == 16
    assert faiss.downcast_index(by_type["ivfpq"].index.index).pq.M == 8
    for coll in by_type.values():
        assert isinstance(coll.index, faiss.IndexIDMap2)
        assert coll.index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_faiss_ids_are_the_stable_int_ids(by_type: dict[str, Collection], vectors: np.ndarray) -> None:
    coll = by_type["flat"]
    np.testing.assert_array_equal(coll.index.reconstruct(int_id("v17")), vectors[17])
    hit = coll.search(vector=vectors[17], k=1, mode="dense")[0]
    assert hit.int_id == int_id("v17")


def test_ivfpq_compresses_the_vectors(by_type: dict[str, Collection]) -> None:
    flat = (by_type["flat"].path / "vectors.faiss").stat().st_size
    ivfpq = (by_type["ivfpq"].path / "vectors.faiss").stat().st_size
    assert flat >= N * DIM * 4
    assert ivfpq < flat / 3


def test_hnsw_with_k_above_ef_search(by_type: dict[str, Collection], queries: np.ndarray) -> None:
    hits = by_type["hnsw"].search(vector=queries[0], k=150, mode="dense")
    assert len(hits) == 150
    assert len({h.id for h in hits}) == 150
    flat = set(top_ids(by_type["flat"], queries[0], 150))
    assert len({h.id for h in hits} & flat) >= 135


@pytest.mark.parametrize(
    ("n", "dim", "pq_m", "built"),
    [(999, 16, 4, "flat"), (1000, 16, 4, "ivfpq"), (1200, 16, 5, "flat"), (0, 16, 4, "flat")],
)
def test_ivfpq_falls_back_to_flat_when_it_cannot_train(
    tmp_path: Path,
    unit_vectors: Callable,
    build_collection: Callable,
    n: int,
    dim: int,
    pq_m: int,
    built: str,
) -> None:
    vecs = unit_vectors(max(n, 1), dim, seed=n)
    docs = [Document(f"d{i}", f"text {i}", {}, vecs[i]) for i in range(n)]
    coll = build_collection(tmp_path, "kb", docs, dim, IndexConfig(type="ivfpq", pq_m=pq_m))
    assert coll.manifest.index.type == "ivfpq"
    assert coll.manifest.index_built == built
    assert coll.index.ntotal == n
    if n:
        assert coll.search(vector=vecs[5], k=1, mode="dense")[0].id == "d5"
    if built == "flat":
        assert isinstance(faiss.downcast_index(coll.index.index), faiss.IndexFlatIP)


def test_l2_metric(tmp_path: Path, unit_vectors: Callable, build_collection: Callable) -> None:
    vecs = unit_vectors(300, 8, seed=9) * np.linspace(0.5, 2.0, 300, dtype=np.float32)[:, None]
    docs = [Document(f"d{i}", f"text {i}", {"i": i}, vecs[i]) for i in range(300)]
    qv = unit_vectors(1, 8, seed=10)[0]
    dist = ((vecs - qv) ** 2).sum(axis=1)
    best = np.argsort(dist)[:5]
    for kind in ("flat", "hnsw"):
        coll = build_collection(tmp_path, f"l2-{kind}", docs, 8, IndexConfig(type=kind, metric="l2"))
        hits = coll.search(vector=qv, k=5, mode="dense")
        assert [h.id for h in hits] == [f"d{i}" for i in best]
        # Higher is better everywhere: the score is the negated squared distance.
        np.testing.assert_allclose([h.score for h in hits], -dist[best], rtol=1e-4, atol=1e-5)
        filtered = coll.search(vector=qv, k=3, filter={"i": {"$in": [1, 2, 3, 4]}}, mode="dense")
        expected = sorted([1, 2, 3, 4], key=lambda i: dist[i])[:3]
        assert [h.id for h in filtered] == [f"d{i}" for i in expected]
        np.testing.assert_allclose([h.score for h in filtered], -dist[expected], rtol=1e-4, atol=1e-5)
