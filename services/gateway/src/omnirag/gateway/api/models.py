"""``GET /v1/models``, ``POST /v1/embeddings`` (through the embedder), ``GET /v1/collections``."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from omnirag.core.errors import UpstreamError
from omnirag.core.responses import JSONResponse
from omnirag.gateway.deps import Gateway, Key

log = logging.getLogger("omnirag.gateway.models")
router = APIRouter(prefix="/v1", tags=["models"])
_STARTED = int(time.time())


@router.get("/models", summary="The chat model and the embedding model behind this gateway")
async def models(key: Key, gw: Gateway) -> JSONResponse:
    data = [{"id": gw.settings.llm_model, "object": "model", "created": _STARTED, "owned_by": "omnirag"}]
    try:
        info = (await gw.http.get(gw.settings.embedder_url.rstrip("/") + "/v1/info", timeout=2.0)).json()
        data.append(
            {"id": info["model"], "object": "model", "created": _STARTED, "owned_by": "omnirag-embedder"}
        )
    except Exception as exc:  # the chat model is still served; the embedder's absence shows in /readyz
        log.info("embedder info unavailable for /v1/models", extra={"error": type(exc).__name__})
    return JSONResponse({"object": "list", "data": data})


@router.post("/embeddings", summary="OpenAI embeddings, computed by the embedder service")
async def embeddings(request: Request, key: Key, gw: Gateway) -> Response:
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
    return Response(
        upstream.content, status_code=upstream.status_code, media_type="application/json", headers=headers
    )


@router.get("/collections", summary="Collections this key may read")
async def collections(key: Key, gw: Gateway) -> JSONResponse:
    try:
        r = await gw.http.get(
            gw.settings.retriever_url.rstrip("/") + "/v1/collections", timeout=gw.settings.upstream_timeout
        )
        r.raise_for_status()
    except Exception as exc:
        raise UpstreamError(f"the retriever is unreachable: {type(exc).__name__}") from exc
    items = [c for c in r.json()["collections"] if key.may_read(c.get("name", ""))]
    return JSONResponse({"object": "list", "data": items})
