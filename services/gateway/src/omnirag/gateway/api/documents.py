"""``GET /v1/collections/{name}/documents`` and ``DELETE /v1/collections/{name}/documents/{id}``.

The listing comes from the retriever, which reads the index version it serves; a key sees the
documents of every collection it may read, or with ``mine=true`` only the uploads of its own
principal (the key, or the user a trusted key acts for).

A delete is checked here and done by the indexer: only the indexer writes indexes, so it is queued
on the ingest stream like an upload (``kind: "delete"``) and its job moves to done once the version
without the document is published. Only the principal that uploaded a document, or an admin key,
may delete it; a knowledge base's documents are removed through the knowledge base (its sources),
never through the API, since its next run would bring them back.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from omnirag.core.clients.retriever import RetrieverClient
from omnirag.core.errors import Conflict, Forbidden, NotFound
from omnirag.core.names import check_collection_name
from omnirag.core.responses import JSONResponse
from omnirag.core.schemas.retrieval import MAX_DOCUMENTS_PAGE
from omnirag.gateway.auth import ApiKey
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.ingest_queue import accepted, check_room, ingest_request, queue
from omnirag.gateway.state import GatewayState

router = APIRouter(tags=["documents"])

DOCUMENT_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_CURSOR_CHARS = 4096


def _retriever(gw: GatewayState) -> RetrieverClient:
    # Borrows the gateway's pooled client: a listing costs no new connection.
    return RetrieverClient(
        gw.settings.retriever_url, timeout=gw.settings.upstream_timeout, async_client=gw.http
    )


def may_delete(key: ApiKey, doc: dict[str, Any]) -> bool:
    origin = doc.get("origin") or {}
    if origin.get("kind") != "upload":
        return False
    return key.admin or (origin.get("principal") is not None and origin.get("principal") == key.principal)


@router.get(
    "/v1/collections/{name}/documents",
    summary="Documents of a collection (paged): source, title, origin, chunks, indexed at",
)
async def list_documents(
    name: str,
    key: Key,
    gw: Gateway,
    limit: Annotated[int, Query(ge=1, le=MAX_DOCUMENTS_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
    mine: bool = False,
) -> JSONResponse:
    check_collection_name(name)
    key.check_collection(name)
    page = await _retriever(gw).alist_documents(
        name,
        limit=limit,
        cursor=cursor,
        origin="upload" if mine else None,
        principal=key.principal if mine else None,
    )
    data = [doc | {"deletable": may_delete(key, doc)} for doc in page["data"]]
    return JSONResponse(
        {"object": "list", "data": data, "next_cursor": page.get("next_cursor"), "total": page["total"]}
    )


@router.delete(
    "/v1/collections/{name}/documents/{doc_id}",
    status_code=202,
    summary="Queue the deletion of an uploaded document (its uploader or an admin key)",
)
async def delete_document(name: str, doc_id: str, key: Key, gw: Gateway) -> JSONResponse:
    check_collection_name(name)
    key.check_collection(name)
    if not DOCUMENT_ID.match(doc_id):
        raise NotFound(f"no document {doc_id[:64]!r} in the collection {name!r}", code="document_not_found")
    try:
        doc = await _retriever(gw).aget_document(name, doc_id)
    except NotFound as exc:
        raise NotFound(
            f"no document {doc_id!r} in the collection {name!r}", code="document_not_found"
        ) from exc
    origin = doc.get("origin") or {}
    if origin.get("kind") != "upload":
        kb = origin.get("kb") or name
        raise Conflict(
            f"document {doc_id!r} ({doc.get('source')}) comes from the knowledge base {kb!r}"
            f"{' (source ' + origin['source'] + ')' if origin.get('source') else ''}: remove it from "
            "that source, or the source from the knowledge base's configuration, and the next "
            "indexing run deletes it",
            code="document_from_knowledge_base",
        )
    if not may_delete(key, doc):
        raise Forbidden(
            "only the principal that uploaded this document, or an admin key, may delete it",
            code="document_forbidden",
        )
    await check_room(gw)
    req = ingest_request(
        job_id=uuid.uuid4().hex,
        collection=name,
        kind="delete",
        source=doc.get("source") or doc_id,
        document=doc_id,
        origin_key=key.name,
        origin_principal=key.principal,
    )
    await queue(gw, req)
    gw.metrics.ingest_jobs.labels(req.kind).inc()
    return accepted(req)
