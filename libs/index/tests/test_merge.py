"""Dense search over segments (issue 17): the merged top-k of per-segment Flat searches equals the
top-k of one Flat index over the same live vectors, ids and scores; HNSW segments keep their recall."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from omnirag.index import dense
from omnirag.index.manifest import IndexConfig
from omnirag.index.merge import merge_top

DIM = 384


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def build(ids: np.ndarray, vecs: np.ndarray, cfg: IndexConfig) -> object:
    index, _ = dense.build(iter([(ids, vecs)]), DIM, cfg, len(ids))
    return index


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_segments_merge_to_exactly_one_flat_index(metric: str) -> None:
    rng = np.random.default_rng(5)
    cfg = IndexConfig(type="flat", metric=metric)
    vecs = unit(rng, 5000)
    ids = np.arange(10_000, 15_000, dtype=np.int64)
    deleted = rng.random(5000) < 0.1
    live_ids = ids[~deleted]
    whole = build(live_ids, vecs[~deleted], cfg)
    bounds = [0, 3000, 4500, 4950, 4999, 5000]
    segments = [(ids[a:b], build(ids[a:b], vecs[a:b], cfg)) for a, b in itertools.pairwise(bounds)]
    for q in unit(rng, 20):
        for k in (1, 10, 100):
            want_scores, want_ids = dense.search(whole, "flat", cfg, q, k)
            parts = []
            for seg_ids, index in segments:
                live = seg_ids[~np.isin(seg_ids, ids[deleted])]
                parts.append(dense.search(index, "flat", cfg, q, k, allowed=live))
            got_scores, got_ids = merge_top(parts, k)
            assert got_ids.tolist() == want_ids.tolist()
            assert np.array_equal(got_scores, want_scores)


def test_hnsw_segments_keep_the_recall_of_one_hnsw_index() -> None:
    rng = np.random.default_rng(9)
    vecs = unit(rng, 6000)
    ids = np.arange(6000, dtype=np.int64)
    flat = IndexConfig(type="flat")
    hnsw = IndexConfig(type="hnsw")
    exact = build(ids, vecs, flat)
    one = build(ids, vecs, hnsw)
    segments = [build(ids[a : a + 2000], vecs[a : a + 2000], hnsw) for a in (0, 2000, 4000)]
    recall_one, recall_segments = [], []
    for q in unit(rng, 50):
        truth = set(dense.search(exact, "flat", flat, q, 10)[1].tolist())
        recall_one.append(len(truth & set(dense.search(one, "hnsw", hnsw, q, 10)[1].tolist())) / 10)
        merged = merge_top([dense.search(s, "hnsw", hnsw, q, 10) for s in segments], 10)[1]
        recall_segments.append(len(truth & set(merged.tolist())) / 10)
    assert np.mean(recall_segments) >= np.mean(recall_one) - 0.01


def test_merge_orders_ties_by_id_and_keeps_an_id_once() -> None:
    parts = [
        (np.array([0.9, 0.5]), np.array([7, 3])),
        (np.array([0.5, 0.8, 0.1]), np.array([2, 7, 9])),
        (np.zeros(0), np.zeros(0, dtype=np.int64)),
    ]
    scores, ids = merge_top(parts, 3)
    assert ids.tolist() == [7, 2, 3] and scores.tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert merge_top([], 5)[1].tolist() == []
    assert merge_top(parts, 0)[1].tolist() == []


@pytest.mark.parametrize("seed", range(20))
def test_the_partial_sort_of_the_small_segments_block_orders_as_a_full_sort(seed: int) -> None:
    """_best (a partition, then a sort of what can make the top k) gives the full lexsort's answer,
    also where many scores tie at the k-th place; in_sorted answers as np.isin."""
    from omnirag.index.collection import _best, in_sorted

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Few distinct scores: ties everywhere, at the k-th place too.
    scores = rng.integers(0, 6, n).astype(np.float32) / 5
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    for k in (1, 3, 10, 50):
        assert _best(scores, ids, k).tolist() == np.lexsort((ids, -scores))[:k].tolist()
    sorted_ids = np.unique(rng.integers(0, 20 * n, int(rng.integers(1, 50))))
    assert in_sorted(ids, sorted_ids).tolist() == np.isin(ids, sorted_ids).tolist()
