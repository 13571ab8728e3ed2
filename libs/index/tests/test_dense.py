"""The FAISS part: flat, HNSW and IVF-PQ indexes, built, saved, loaded back and searched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from omnirag.index import Collection, Document, IndexConfig, dense
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
    assert coll.segments[0].index.ntotal == N
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
    hnsw = faiss.downcast_index(by_type["hnsw"].segments[0].index.index)
    assert isinstance(hnsw, faiss.IndexHNSWFlat)
    assert hnsw.hnsw.efSearch == 64
    ivf = faiss.extract_index_ivf(by_type["ivfpq"].segments[0].index)
    assert ivf.nlist == N // 39  # lowered from 256 for a small collection
    assert ivf.nprobe == 16
    assert faiss.downcast_index(by_type["ivfpq"].segments[0].index.index).pq.M == 8
    for coll in by_type.values():
        assert isinstance(coll.segments[0].index, faiss.IndexIDMap2)
        assert coll.segments[0].index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_faiss_ids_are_the_stable_int_ids(by_type: dict[str, Collection], vectors: np.ndarray) -> None:
    coll = by_type["flat"]
    np.testing.assert_array_equal(coll.segments[0].index.reconstruct(int_id("v17")), vectors[17])
    hit = coll.search(vector=vectors[17], k=1, mode="dense")[0]
    assert hit.int_id == int_id("v17")


def test_ivfpq_compresses_the_vectors(by_type: dict[str, Collection]) -> None:
    flat = (by_type["flat"].segments[0].path / "vectors.faiss").stat().st_size
    ivfpq = (by_type["ivfpq"].segments[0].path / "vectors.faiss").stat().st_size
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
    assert sum(s.index.ntotal for s in coll.segments) == n
    if n:
        assert coll.search(vector=vecs[5], k=1, mode="dense")[0].id == "d5"
    if n:  # an empty collection has no segment
        [segment] = coll.segments
        assert segment.index_built == built
        if built == "flat":
            assert isinstance(faiss.downcast_index(segment.index.index), faiss.IndexFlatIP)


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


# --- GPUs ---------------------------------------------------------------------------------------------
# This machine has no GPU and the CPU build of faiss, so the GPU path is driven through a stand-in
# for the faiss module that reports one GPU and records the calls: it proves the code is wired (the
# index is handed to index_cpu_to_all_gpus, searched there, and copied back with index_gpu_to_cpu
# before writing), not that faiss-gpu works. Its "GPU copy" is a real CPU clone, so the results are real.


class _RecordingIndex:
    """A real faiss index whose searches are counted."""

    def __init__(self, index: object) -> None:
        self.index = index
        self.searches = 0

    def search(self, *args: object, **kwargs: object) -> object:
        self.searches += 1
        return self.index.search(*args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.index, name)


class FakeGpuFaiss:
    """The GPU part of the faiss module's API, with ``gpus`` GPUs."""

    StandardGpuResources = object  # what tells the GPU build of faiss from faiss-cpu

    def __init__(self, gpus: int = 1, *, fail: bool = False) -> None:
        self.gpus = gpus
        self.fail = fail
        self.to_gpu: list[object] = []
        self.to_cpu: list[object] = []

    def get_num_gpus(self) -> int:
        return self.gpus

    def index_cpu_to_all_gpus(self, index: object) -> _RecordingIndex:
        self.to_gpu.append(index)
        if self.fail:
            raise RuntimeError("Error in GpuIndexIVFPQ: this index type is not implemented on GPU")
        return _RecordingIndex(faiss.clone_index(index))

    def index_gpu_to_cpu(self, index: _RecordingIndex) -> object:
        self.to_cpu.append(index)
        return faiss.clone_index(index.index)


def test_gpu_setting_without_a_gpu_is_one_clear_line() -> None:
    # The real faiss here: the CPU build (or no device) must be refused, naming the setting.
    assert dense.gpu_count() == 0
    with pytest.raises(dense.GpuUnavailable) as caught:
        dense.require_gpus("RETRIEVER_FAISS_GPU=true")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("RETRIEVER_FAISS_GPU=true needs a GPU, but ")
    assert "the installed faiss is the CPU build (faiss-cpu)" in message
    assert "turn the setting off" in message
    # The GPU build on a machine without a device says so instead.
    with pytest.raises(dense.GpuUnavailable, match=r"sees none \(get_num_gpus\(\) is 0\)"):
        dense.require_gpus("INDEXER_FAISS_GPU=true", FakeGpuFaiss(gpus=0))
    assert dense.require_gpus("X=true", FakeGpuFaiss(gpus=2)) == 2


def test_loaded_index_moves_to_the_gpus_and_filtered_searches_stay_exact(
    by_type: dict[str, Collection], vectors: np.ndarray, queries: np.ndarray
) -> None:
    coll = by_type["flat"]
    fake = FakeGpuFaiss()
    index = coll.segments[0].index
    moved = dense.to_gpus(index, "flat", fake)
    assert fake.to_gpu == [index]
    assert isinstance(moved, dense.GpuIndex) and moved.ntotal == N and moved.gpus == 1
    cfg = coll.manifest.index
    want_scores, want_ids = dense.search(index, "flat", cfg, queries[0], 10)
    scores, ids = dense.search(moved, "flat", cfg, queries[0], 10)
    assert moved.gpu.searches == 1  # an unfiltered search runs on the GPU copy
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    # GPU indexes ignore ID selectors: a filtered search runs on the CPU copy and honours the filter.
    allowed = np.array([int_id(f"v{i}") for i in range(0, N, 7)], dtype=np.int64)
    _, ids = dense.search(moved, "flat", cfg, queries[0], 10, allowed)
    assert moved.gpu.searches == 1
    assert len(ids) == 10 and set(ids.tolist()) <= set(allowed.tolist())
    # So does a k above what a GPU search can select.
    _, ids = dense.search(moved, "flat", cfg, queries[0], dense.GPU_MAX_K + 1)
    assert moved.gpu.searches == 1 and len(ids) == N
    # Written from the CPU copy, which reads back as the same index.
    assert moved.metric_type == faiss.METRIC_INNER_PRODUCT


def test_hnsw_stays_on_the_cpu(by_type: dict[str, Collection]) -> None:
    fake = FakeGpuFaiss()
    index = by_type["hnsw"].segments[0].index
    assert dense.to_gpus(index, "hnsw", fake) is index
    assert fake.to_gpu == []
    with pytest.raises(dense.GpuUnavailable):
        dense.to_gpus(index, "flat", FakeGpuFaiss(gpus=0))


@pytest.mark.parametrize("fail", [False, True], ids=["on-gpu", "gpu-refuses-falls-back-to-cpu"])
def test_ivfpq_is_trained_on_the_gpus_and_written_from_a_cpu_copy(
    tmp_path: Path, vectors: np.ndarray, fail: bool
) -> None:
    fake = FakeGpuFaiss(fail=fail)
    cfg = IndexConfig(type="ivfpq", pq_m=8, ivf_nlist=32, ivf_nprobe=8)
    ids = np.array([int_id(f"v{i}") for i in range(N)], dtype=np.int64)
    batches = iter([(ids[:1000], vectors[:1000]), (ids[1000:], vectors[1000:])])
    index, built = dense.build(batches, DIM, cfg, N, gpu=True, lib=fake)
    assert built == "ivfpq"
    assert len(fake.to_gpu) == 1 and isinstance(fake.to_gpu[0], faiss.IndexIDMap2)
    assert len(fake.to_cpu) == (0 if fail else 1)
    assert isinstance(index, faiss.IndexIDMap2) and index.ntotal == N
    ivf = faiss.extract_index_ivf(index)
    assert ivf.is_trained and ivf.nlist == 32 and ivf.nprobe == 8
    dense.save(index, tmp_path / "vectors.faiss")
    loaded = dense.load(tmp_path / "vectors.faiss")
    found = sum(dense.search(loaded, "ivfpq", cfg, vectors[i], 5)[1][0] == ids[i] for i in range(0, N, 100))
    assert found >= 18


def test_gpu_build_without_a_gpu_fails_before_training(vectors: np.ndarray) -> None:
    cfg = IndexConfig(type="ivfpq", pq_m=8, ivf_nlist=32)
    ids = np.arange(N, dtype=np.int64)
    with pytest.raises(dense.GpuUnavailable):
        dense.build(iter([(ids, vectors)]), DIM, cfg, N, gpu=True)
