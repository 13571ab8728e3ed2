"""One search: embed the query if needed, run it on a search thread, report what happened.

"If needed" includes hybrid: when the dense part of the fusion would count 0 for this query (a
Chinese query and an English-only model, see ``omnirag.index.collection.dense_weight``), the query is
not embedded at all. An embedding costs ~20x the BM25 search it would be fused with (measured on
CMRC: see bench/retriever.py --cjk-hybrid), and with weight 0 its only use is to order the documents
BM25 does not find and to break BM25's ties; when neither can happen (BM25 found k documents, no
tie at the cut or among them) the hits are those of the full fusion, computed from BM25 alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from omnirag.core.errors import InvalidInput, NotReady, OmniragError
from omnirag.core.schemas.retrieval import SearchRequest
from omnirag.index import Collection, Hit, ModeUnavailable
from omnirag.index.collection import dense_weight
from omnirag.index.filters import compile_filter
from omnirag.retriever.config import RetrieverSettings
from omnirag.retriever.registry import Registry, RetrieverMetrics

log = logging.getLogger("omnirag.retriever.search")


class Searcher:
    def __init__(self, settings: RetrieverSettings, registry: Registry, metrics: RetrieverMetrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        # FAISS's OpenMP thread count is per thread: set it in every search thread, not once.
        self.executor = ThreadPoolExecutor(
            settings.search_threads,
            thread_name_prefix="omnirag-search",
            initializer=faiss.omp_set_num_threads,
            initargs=(settings.faiss_threads,),
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def search(self, name: str, req: SearchRequest) -> dict[str, Any]:
        started = time.perf_counter()
        if req.k > self.settings.max_k:
            raise InvalidInput(f"k={req.k} is above this service's limit of {self.settings.max_k}")
        compile_filter(req.filter)  # a bad filter is 422 before any work is done
        entry = self.registry.get(name)
        collection = entry.usable()
        mode = req.mode
        degraded: list[str] = []
        vector: np.ndarray | None = None
        loop = asyncio.get_running_loop()
        if mode == "hybrid" and req.vector is None and req.query:
            languages = collection.manifest.embedding.languages
            if dense_weight(req.query, languages) == 0.0:
                hits = await loop.run_in_executor(
                    self.executor, lambda: _hybrid_without_dense(collection, req)
                )
                if hits is not None:
                    return self._answer(name, collection, "hybrid", hits, [], started)
        if req.vector is not None:
            vector = np.asarray(req.vector, dtype=np.float32)
        elif mode in ("dense", "hybrid"):
            try:
                vector = await self.registry.embedder.embed(
                    req.query or "", collection.manifest.embedding.normalize
                )
            except OmniragError as exc:
                if mode == "dense":
                    raise NotReady(
                        f"dense search needs the embedder, which failed: {exc}", code="embedder_unavailable"
                    ) from exc
                # Hybrid still has BM25: answer from it and say so.
                log.warning(
                    "embedder unavailable; hybrid search falls back to sparse", extra={"error": str(exc)}
                )
                degraded.append("embedder")
                self.metrics.degraded.labels("embedder").inc()
                mode = "sparse"
        if mode == "hybrid" and not req.query:
            mode = "dense"
        try:
            hits = await loop.run_in_executor(
                self.executor,
                lambda: collection.search(
                    vector=vector,
                    query=req.query,
                    k=req.k,
                    filter=req.filter,
                    mode=mode,
                    score_threshold=req.score_threshold,
                ),
            )
        except ModeUnavailable as exc:
            raise InvalidInput(str(exc)) from exc
        return self._answer(name, collection, mode, hits, degraded, started)

    def _answer(
        self,
        name: str,
        collection: Collection,
        mode: str,
        hits: list[Hit],
        degraded: list[str],
        started: float,
    ) -> dict[str, Any]:
        elapsed = time.perf_counter() - started
        self.metrics.search_seconds.labels(mode).observe(elapsed)
        self.metrics.hits.observe(len(hits))
        if not hits:
            self.metrics.empty.labels(name).inc()
        return {
            "collection": name,
            "version": collection.version,
            "mode": mode,
            "hits": [
                {
                    "id": h.id,
                    "text": h.text,
                    "metadata": h.metadata,
                    "score": h.score,
                    "dense_score": h.dense_score,
                    "sparse_score": h.sparse_score,
                }
                for h in hits
            ],
            "degraded": degraded,
            "took_ms": round(elapsed * 1000, 3),
        }


def _hybrid_without_dense(collection: Collection, req: SearchRequest) -> list[Hit] | None:
    """The hybrid hits of a query whose dense weight is 0, from BM25 alone; None when they would
    depend on the dense ranking after all (fewer than k BM25 hits to fill, or a tie to break), so
    that the caller embeds the query and runs the full fusion instead.

    Mirrors ``Collection._hybrid``: with the dense weight 0 the fused score is the BM25 score over
    max(the query's BM25 ceiling, the best BM25 score), ties are broken by the dense score, and
    candidates BM25 does not score follow at fused score 0 in dense order.
    """
    assert req.query is not None
    # One more than k, to see whether the k-th is tied with the next.
    found = collection.search(query=req.query, k=req.k + 1, filter=req.filter, mode="sparse")
    if len(found) < req.k:
        return None
    raw = np.asarray([h.score for h in found], dtype=np.float32)
    # float32, as the fusion computes it, so that a tie there is a tie here.
    fused = raw / max(collection.sparse_ceiling(req.query), float(raw.max(initial=0.0)), 1e-9)
    if np.any(fused[1:] == fused[:-1]):
        return None
    hits = [
        Hit(id=h.id, text=h.text, metadata=h.metadata, score=float(s), sparse_score=h.score, int_id=h.int_id)
        for h, s in zip(found[: req.k], fused[: req.k].tolist(), strict=True)
    ]
    if req.score_threshold is not None:
        hits = [h for h in hits if h.score >= req.score_threshold]
    return hits
