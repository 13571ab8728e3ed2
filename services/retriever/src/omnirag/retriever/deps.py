"""Dependencies: routes reach the registry and searcher made in the lifespan."""

from __future__ import annotations

from fastapi import Request

from omnirag.retriever.registry import Registry
from omnirag.retriever.search import Searcher


# async: FastAPI runs plain-function dependencies in its thread pool, a hop per request.
async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_searcher(request: Request) -> Searcher:
    searcher: Searcher = request.app.state.searcher
    return searcher
