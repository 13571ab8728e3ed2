"""``/v1/collections``: list, describe and search the collections being served."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from omnirag.core.responses import JSONResponse
from omnirag.core.routing import OrjsonRoute
from omnirag.core.schemas.retrieval import CollectionDetail, CollectionList, SearchRequest, SearchResponse
from omnirag.retriever.deps import get_registry, get_searcher
from omnirag.retriever.registry import Entry, Registry
from omnirag.retriever.search import Searcher

router = APIRouter(prefix="/v1/collections", tags=["collections"], route_class=OrjsonRoute)
RegistryDep = Annotated[Registry, Depends(get_registry)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]


def _summary(entry: Entry) -> dict:
    c = entry.collection
    return {
        "name": entry.name,
        "version": c.version if c is not None else entry.version,
        "documents": c.count if c is not None else 0,
        "status": entry.status,
        "detail": entry.detail,
        "embedding_model": c.manifest.embedding.model if c is not None else None,
        "dimension": c.manifest.embedding.dimension if c is not None else None,
        "index_type": c.manifest.index_built if c is not None else None,
    }


@router.get("", response_model=CollectionList)
async def list_all(registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"collections": [_summary(e) for _, e in sorted(registry.entries.items())]})


@router.get("/{name}", response_model=CollectionDetail)
async def describe(name: str, registry: RegistryDep) -> JSONResponse:
    entry = registry.get(name)
    body = _summary(entry)
    body["manifest"] = entry.collection.manifest.model_dump() if entry.collection is not None else None
    return JSONResponse(body)


@router.post("/{name}/search", response_model=SearchResponse)
async def search(name: str, body: SearchRequest, searcher: SearcherDep) -> JSONResponse:
    return JSONResponse(await searcher.search(name, body))
