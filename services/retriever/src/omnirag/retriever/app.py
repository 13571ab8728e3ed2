"""``create_app(settings)``: the retriever's FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
from fastapi import FastAPI

from omnirag.core.app import create_service_app
from omnirag.core.health import Check
from omnirag.retriever.api import admin, collections
from omnirag.retriever.config import RetrieverSettings
from omnirag.retriever.embedding import QueryEmbedder
from omnirag.retriever.registry import Registry, RetrieverMetrics
from omnirag.retriever.search import Searcher


def create_app(settings: RetrieverSettings | None = None) -> FastAPI:
    settings = settings or RetrieverSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faiss.omp_set_num_threads(settings.faiss_threads)
        metrics = RetrieverMetrics(app.state.metrics)
        embedder = QueryEmbedder(
            settings.embedder_url, settings.embedder_timeout, headers=settings.service_headers()
        )
        registry = Registry(settings, embedder, metrics)
        app.state.registry = registry
        app.state.searcher = Searcher(settings, registry, metrics)
        readiness = app.state.readiness

        async def embedder_probe() -> tuple[bool, str]:
            before = embedder.info
            info = await embedder.fetch_info()
            if info != before:
                registry.recheck_compatibility()
            return True, f"{info.model} ({info.dimension}d)"

        # The detail names collections and states; paths and load errors go in the info (log only).
        async def index_probe() -> Check:
            if not settings.index_root.is_dir():
                return Check(False, "index root missing", f"index root {settings.index_root} does not exist")
            blocking, warnings = registry.problems()
            if blocking:
                states = {n: e.status for n, e in registry.entries.items() if n in blocking}
                return Check(
                    False,
                    "; ".join(f"{n}: {states[n]}" for n in sorted(blocking)),
                    "; ".join(f"{n}: {p}" for n, p in sorted(blocking.items())),
                )
            # A newer version that failed to load is reported, but the pod stays in service.
            notes = "".join(f"; {n}: a newer version failed to load" for n in sorted(warnings))
            return Check(
                True,
                f"{len(registry.entries)} collection(s){notes}",
                "; ".join(f"{n}: {p}" for n, p in sorted(warnings.items())) or None,
            )

        readiness.add_probe("embedder", embedder_probe)
        readiness.add_probe("index", index_probe)
        await registry.refresh()
        poller = asyncio.create_task(registry.poll_forever())
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            app.state.searcher.close()
            await registry.close()
            await embedder.aclose()

    app = create_service_app(
        "retriever",
        settings,
        lifespan=lifespan,
        title="omnirag retriever",
        description="FAISS + BM25 collections served from versioned index directories.",
        require_service_token=True,
    )
    app.include_router(collections.router)
    app.include_router(admin.router)
    return app
