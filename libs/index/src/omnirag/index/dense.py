"""The FAISS index of a version: IndexIDMap2 over Flat, HNSW or IVF-PQ, with id-restricted search."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from omnirag.index.manifest import IndexConfig, IndexType

# faiss's bundled stubs miss much of its API (SearchParametersHNSW, selectors): use it untyped.
faiss: Any = _faiss

log = logging.getLogger("omnirag.index.dense")


def _metric(cfg: IndexConfig) -> int:
    return faiss.METRIC_INNER_PRODUCT if cfg.metric == "ip" else faiss.METRIC_L2


def build(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], dimension: int, cfg: IndexConfig, total: int
) -> tuple[faiss.Index, IndexType]:
    """Build the index from (ids, vectors) batches; IVF-PQ trains on all vectors first."""
    metric = _metric(cfg)
    kind: IndexType = cfg.type
    if kind == "ivfpq":
        nlist = max(1, min(cfg.ivf_nlist, total // 39))
        if total < 1000 or dimension % cfg.pq_m != 0:
            log.info(
                "ivfpq needs >= 1000 vectors and pq_m dividing the dimension; building flat",
                extra={"vectors": total},
            )
            kind = "flat"
    if kind == "flat":
        base = (
            faiss.IndexFlatIP(dimension)
            if metric == faiss.METRIC_INNER_PRODUCT
            else faiss.IndexFlatL2(dimension)
        )
        index = faiss.IndexIDMap2(base)
        for ids, vecs in batches:
            index.add_with_ids(vecs, ids)
        return index, kind
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dimension, cfg.hnsw_m, metric)
        base.hnsw.efConstruction = cfg.hnsw_ef_construction
        base.hnsw.efSearch = cfg.hnsw_ef_search
        index = faiss.IndexIDMap2(base)
        for ids, vecs in batches:
            index.add_with_ids(vecs, ids)
        return index, kind
    # IVF-PQ: training needs the vectors in memory once.
    all_ids, all_vecs = zip(*batches, strict=True)
    ids = np.concatenate(all_ids)
    vecs = np.concatenate(all_vecs)
    quantizer = (
        faiss.IndexFlatIP(dimension) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(dimension)
    )
    base = faiss.IndexIVFPQ(quantizer, dimension, nlist, cfg.pq_m, 8, metric)
    base.train(vecs)
    base.nprobe = min(cfg.ivf_nprobe, nlist)
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(vecs, ids)
    return index, "ivfpq"


def save(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(
    index: faiss.Index,
    kind: IndexType,
    cfg: IndexConfig,
    query: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, int ids) for one query vector, optionally only among ``allowed`` ids."""
    q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    params = None
    if allowed is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(cfg.hnsw_ef_search, 2 * k))
        elif kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=cfg.ivf_nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
    elif kind == "hnsw" and k > cfg.hnsw_ef_search:
        params = faiss.SearchParametersHNSW(efSearch=2 * k)
    scores, ids = index.search(q, k, params=params)
    keep = ids[0] >= 0
    out_scores = scores[0][keep]
    if cfg.metric == "l2":
        out_scores = -out_scores  # higher is better everywhere above this module
    return out_scores, ids[0][keep]
