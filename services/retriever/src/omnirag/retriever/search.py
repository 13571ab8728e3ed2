"""One search: embed the query if needed, run it on a search thread, report what happened."""

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
from omnirag.index import ModeUnavailable
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
        loop = asyncio.get_running_loop()
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
