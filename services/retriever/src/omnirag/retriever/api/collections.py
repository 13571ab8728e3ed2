"""``/v1/collections``: list, describe and search the collections being served, and list their
documents (chunks grouped by document, with each one's origin)."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from omnirag.core.errors import Conflict, InvalidInput, NotFound, NotReady, raises
from omnirag.core.responses import JSONResponse
from omnirag.core.routing import OrjsonRoute
from omnirag.core.schemas.retrieval import (
    MAX_DOCUMENTS_PAGE,
    CollectionDetail,
    CollectionList,
    DocumentList,
    DocumentOriginKind,
    DocumentSummary,
    SearchRequest,
    SearchResponse,
)
from omnirag.index.docstore import MAX_CURSOR_CHARS
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
@raises(NotFound)
async def describe(name: str, registry: RegistryDep) -> JSONResponse:
    entry = registry.get(name)
    body = _summary(entry)
    body["manifest"] = entry.collection.manifest.model_dump() if entry.collection is not None else None
    return JSONResponse(body)


@router.post("/{name}/search", response_model=SearchResponse)
@raises(NotFound, Conflict, NotReady)  # NotReady: a dense search without the embedder
async def search(name: str, body: SearchRequest, searcher: SearcherDep) -> JSONResponse:
    return JSONResponse(await searcher.search(name, body))


DOCUMENT_ID = re.compile(r"^[0-9a-f]{16}$")


@router.get("/{name}/documents", response_model=DocumentList)
@raises(NotFound, Conflict)
async def list_documents(
    name: str,
    registry: RegistryDep,
    searcher: SearcherDep,
    limit: Annotated[int, Query(ge=1, le=MAX_DOCUMENTS_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
    origin: DocumentOriginKind | None = None,
    principal: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
) -> JSONResponse:
    collection = registry.get(name).usable()
    loop = asyncio.get_running_loop()
    try:
        # A scan of the version's docstore: on the search threads, never on the event loop.
        page = await loop.run_in_executor(
            searcher.executor,
            lambda: collection.documents(limit=limit, cursor=cursor, origin=origin, principal=principal),
        )
    except ValueError:
        raise InvalidInput(
            "cursor is not one this listing handed out; start again without it", code="invalid_cursor"
        ) from None
    return JSONResponse(
        {"data": [d.as_dict() for d in page.documents], "next_cursor": page.next_cursor, "total": page.total}
    )


@router.get("/{name}/documents/{doc_id}", response_model=DocumentSummary)
@raises(NotFound, Conflict)
async def get_document(name: str, doc_id: str, registry: RegistryDep, searcher: SearcherDep) -> JSONResponse:
    collection = registry.get(name).usable()
    found = None
    if DOCUMENT_ID.match(doc_id):
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(searcher.executor, collection.document, doc_id)
    if found is None:
        raise NotFound(f"no document {doc_id[:64]!r} in the collection {name!r}", code="document_not_found")
    return JSONResponse(found.as_dict())
