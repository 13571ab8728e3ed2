"""``GET /v1/models``, ``POST /v1/embeddings`` (through the embedder), ``GET /v1/collections``."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from omnirag.core.errors import (
    NotFound,
    NotReady,
    OmniragError,
    Overloaded,
    PayloadTooLarge,
    UpstreamError,
    error_body,
    raises,
)
from omnirag.core.responses import JSONResponse
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.state import GatewayState

log = logging.getLogger("omnirag.gateway.models")
router = APIRouter(prefix="/v1", tags=["models"])
_STARTED = int(time.time())


@router.get("/models", summary="The chat models this key may use, then the embedding model")
async def models(key: Key, gw: Gateway) -> JSONResponse:
    default = gw.registry.default
    data: list[dict[str, Any]] = [
        {
            "id": m.name,
            "object": "model",
            "created": _STARTED,
            "owned_by": "omnirag",
            "omnirag": m.public(default=m is default),
        }
        for m in gw.registry.allowed(key)
    ]
    try:
        info = await gw.embedder.info(request_timeout=2.0)
        data.append(
            {
                "id": info.model,
                "object": "model",
                "created": _STARTED,
                "owned_by": "omnirag-embedder",
                "omnirag": {"capabilities": ["embeddings"], "default": False},
            }
        )
    except Exception as exc:  # the chat model is still served; the embedder's absence shows in /readyz
        log.info("embedder info unavailable for /v1/models", extra={"error": type(exc).__name__})
    return JSONResponse({"object": "list", "data": data})


@router.post("/embeddings", summary="OpenAI embeddings, computed by the embedder service")
@raises(UpstreamError, NotReady, Overloaded, PayloadTooLarge, NotFound)  # the embedder's, passed on
async def embeddings(request: Request, key: Key, gw: Gateway) -> Response:
    # Bytes in, bytes out, not through the typed client: the client's fields (base64, dimensions, ones
    # OpenAI adds later) reach the embedder as sent, and 32 vectors are not parsed and re-encoded.
    body = await request.body()
    try:
        upstream = await gw.http.post(
            gw.settings.embedder_url.rstrip("/") + "/v1/embeddings",
            content=body,
            headers={"content-type": "application/json"},
            timeout=gw.settings.upstream_timeout * 6,
        )
    except Exception as exc:
        raise UpstreamError(f"the embedder is unreachable: {type(exc).__name__}") from exc
    headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
    if upstream.status_code >= 500 or upstream.status_code == 401:
        # The embedder's own words on its failures (a model path, an exception) stay in the log;
        # its 4xx about the request (too many inputs, 429) are the client's to read. A 401 is the
        # gateway's service token, not the client's fault.
        log.warning(
            "the embedder failed", extra={"status": upstream.status_code, "error": upstream.text[:500]}
        )
        status = 502 if upstream.status_code == 401 else upstream.status_code
        return JSONResponse(
            error_body("embedder_unavailable", "the embedder cannot compute embeddings now"),
            status_code=status,
            headers=headers,
        )
    return Response(
        upstream.content, status_code=upstream.status_code, media_type="application/json", headers=headers
    )


# What a client may see of a collection: names and states. The retriever's "detail" (load errors
# with index paths, validation messages) stays in the retriever's log and the admin view
# (GET /v1/admin/status). A list of fields kept, not of fields dropped, so that what the retriever
# adds later stays internal until someone decides otherwise.
PUBLIC_COLLECTION_FIELDS = (
    "name",
    "version",
    "documents",
    "status",
    "embedding_model",
    "dimension",
    "index_type",
)


async def retriever_collections(gw: GatewayState) -> list[dict[str, Any]]:
    """The retriever's whole list, details included (for the admin view and, filtered, for clients)."""
    try:
        r = await gw.http.get(
            gw.settings.retriever_url.rstrip("/") + "/v1/collections", timeout=gw.settings.upstream_timeout
        )
        r.raise_for_status()
        items = r.json()["collections"]
    except OmniragError:
        raise  # already a clear answer for the client (an open circuit: 503 with Retry-After)
    except Exception as exc:
        log.warning("collection list unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
        raise UpstreamError("the retriever is unreachable") from exc
    return [c for c in items if isinstance(c, dict)]


@router.get("/collections", summary="Collections this key may read")
@raises(UpstreamError)
async def collections(key: Key, gw: Gateway) -> JSONResponse:
    items = [
        {f: c.get(f) for f in PUBLIC_COLLECTION_FIELDS}
        for c in await retriever_collections(gw)
        if key.may_read(str(c.get("name", "")))
    ]
    return JSONResponse({"object": "list", "data": items})
