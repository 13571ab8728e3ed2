"""The FAISS index of a version: IndexIDMap2 over Flat, HNSW or IVF-PQ, with id-restricted search.

GPUs are used only when a setting asks (RETRIEVER_FAISS_GPU, INDEXER_FAISS_GPU) and the faiss-gpu
build is installed: ``to_gpus`` serves a loaded index from every GPU, ``build(gpu=True)`` trains
IVF-PQ there. Without a GPU ``require_gpus`` refuses at start-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:
    import faiss as _faiss
except ModuleNotFoundError as exc:  # the package was installed without naming its faiss extra
    raise ModuleNotFoundError(
        "omnirag-index needs a faiss build: install omnirag-index[cpu] (faiss-cpu) or "
        "omnirag-index[gpu] (faiss-gpu-cu12), never both",
        name="faiss",
    ) from exc

from omnirag.index.manifest import IndexConfig, IndexType

# faiss's bundled stubs miss much of its API (SearchParametersHNSW, selectors): use it untyped.
faiss: Any = _faiss

log = logging.getLogger("omnirag.index.dense")


class GpuUnavailable(RuntimeError):
    """A FAISS GPU setting is on but this process cannot use a GPU; raised at start-up, never at a search."""


def _gpu_build(lib: Any) -> bool:
    # faiss-cpu has index_cpu_to_all_gpus and a get_num_gpus that says 0, but no GPU resources class.
    return all(hasattr(lib, n) for n in ("StandardGpuResources", "index_cpu_to_all_gpus", "get_num_gpus"))


def gpu_count(lib: Any = None) -> int:
    """GPUs this faiss build can use: 0 for the CPU build (faiss-cpu) or a machine without a device."""
    lib = faiss if lib is None else lib
    return int(lib.get_num_gpus()) if _gpu_build(lib) else 0


def require_gpus(setting: str, lib: Any = None) -> int:
    """The number of GPUs, or a one-line GpuUnavailable naming ``setting`` (e.g.
    ``RETRIEVER_FAISS_GPU=true``) and what to change."""
    lib = faiss if lib is None else lib
    if not _gpu_build(lib):
        raise GpuUnavailable(
            f"{setting} needs a GPU, but the installed faiss is the CPU build (faiss-cpu): use the image "
            "built with FAISS_VARIANT=gpu (faiss-gpu-cu12 instead of faiss-cpu) or turn the setting off"
        )
    count = gpu_count(lib)
    if count < 1:
        raise GpuUnavailable(
            f"{setting} needs a GPU, but faiss sees none (get_num_gpus() is 0): run it on a node with an "
            "NVIDIA GPU (an nvidia.com/gpu limit and the NVIDIA container runtime) or turn the setting off"
        )
    return count


# The largest k a faiss GPU search selects (GPU_MAX_SELECTION_K); larger ones run on the CPU copy.
GPU_MAX_K = 2048


class GpuIndex:
    """An index served from every GPU, with its CPU original kept beside it.

    GPU indexes ignore a search's ID selector (GpuIndexFlat drops the search parameters), so a
    filtered search run there would return unfiltered hits: filtered searches use the CPU copy,
    which costs the index's size in host memory. One lock serializes the GPU searches because
    faiss's GPU resources are not safe to use from several threads at once.
    """

    def __init__(self, cpu: Any, gpu: Any, gpus: int) -> None:
        self.cpu = cpu
        self.gpu = gpu
        self.gpus = gpus
        self.lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    def __getattr__(self, name: str) -> Any:
        if name in {"cpu", "gpu"}:  # not set yet (a half-built object): no recursion
            raise AttributeError(name)
        # Everything else (metric_type, reconstruct, id_map…) reads the CPU copy, which is exact.
        return getattr(self.cpu, name)


def to_gpus(index: Any, kind: IndexType, lib: Any = None) -> Any:
    """``index`` copied to every GPU (``index_cpu_to_all_gpus``), or ``index`` itself for HNSW,
    which faiss has no GPU implementation of (its cloner raises) and which serves from the CPU."""
    lib = faiss if lib is None else lib
    count = gpu_count(lib)
    if count < 1:
        raise GpuUnavailable("no GPU to move the index to")
    if kind == "hnsw":
        log.warning("faiss has no GPU HNSW; this collection is searched on the CPU", extra={"kind": kind})
        return index
    return GpuIndex(index, lib.index_cpu_to_all_gpus(index), count)


def _metric(cfg: IndexConfig) -> int:
    return int(faiss.METRIC_INNER_PRODUCT if cfg.metric == "ip" else faiss.METRIC_L2)


def _quantizer(dimension: int, metric: int) -> Any:
    return (
        faiss.IndexFlatIP(dimension) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(dimension)
    )


def build(
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    dimension: int,
    cfg: IndexConfig,
    total: int,
    *,
    gpu: bool = False,
    lib: Any = None,
) -> tuple[faiss.Index, IndexType]:
    """Build the index from (ids, vectors) batches; IVF-PQ trains on all vectors first.

    With ``gpu`` IVF-PQ is trained and filled on every GPU (k-means and encoding are where a GPU
    pays) and copied back to the CPU, since only a CPU index can be written. Flat and HNSW are
    built on the CPU either way: adding to a flat index is a copy, and faiss has no GPU HNSW.
    """
    lib = faiss if lib is None else lib
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
    base = faiss.IndexIVFPQ(_quantizer(dimension, metric), dimension, nlist, cfg.pq_m, 8, metric)
    base.nprobe = min(cfg.ivf_nprobe, nlist)
    index = faiss.IndexIDMap2(base)
    if gpu:
        require_gpus("dense.build(gpu=True)", lib)
        try:
            # A copy on the GPUs is trained and filled; the untrained CPU original stays as it was.
            on_gpus = lib.index_cpu_to_all_gpus(index)
            on_gpus.train(vecs)
            on_gpus.add_with_ids(vecs, ids)
            built = lib.index_gpu_to_cpu(on_gpus)
        except RuntimeError:
            # GPU IVF-PQ takes fewer shapes than the CPU one (code sizes, float16 lookup tables for
            # many sub-quantizers) and GPU memory is smaller: a slower build beats a failed run.
            log.warning("IVF-PQ could not be built on the GPU; building it on the CPU", exc_info=True)
        else:
            faiss.extract_index_ivf(built).nprobe = min(cfg.ivf_nprobe, nlist)
            return built, "ivfpq"
    index.train(vecs)
    index.add_with_ids(vecs, ids)
    return index, "ivfpq"


def save(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index.cpu if isinstance(index, GpuIndex) else index, str(path))


def load(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(
    index: faiss.Index,
    kind: IndexType,
    cfg: IndexConfig,
    query: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
    *,
    selector: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, int ids) for one query vector, optionally only among ``allowed`` ids, or
    among those ``selector`` (a FAISS IDSelector: a segment's live chunks) lets through."""
    q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    params = None
    sel = selector
    if allowed is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    if sel is not None:
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(cfg.hnsw_ef_search, 2 * k))
        elif kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=cfg.ivf_nprobe)
        else:
            params = faiss.SearchParameters(sel=sel)
    elif kind == "hnsw" and k > cfg.hnsw_ef_search:
        params = faiss.SearchParametersHNSW(efSearch=2 * k)
    if isinstance(index, GpuIndex):
        if params is None and k <= GPU_MAX_K:
            with index.lock:
                scores, ids = index.gpu.search(q, k)
        else:
            scores, ids = index.cpu.search(q, k, params=params)
    else:
        scores, ids = index.search(q, k, params=params)
    keep = ids[0] >= 0
    out_scores = scores[0][keep]
    if cfg.metric == "l2":
        out_scores = -out_scores  # higher is better everywhere above this module
    return out_scores, ids[0][keep]
