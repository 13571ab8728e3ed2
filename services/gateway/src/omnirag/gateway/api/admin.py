"""``GET /v1/admin/status``: what the public answers leave out, for keys with ``admin: true``.

``/readyz`` and ``GET /v1/collections`` show names and states only; an operator also needs the
upstream URLs, why a check is not ok, and why a collection cannot be served. They are here, behind
an admin key, and in the logs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request

from omnirag.core.errors import Forbidden, OmniragError
from omnirag.core.responses import JSONResponse
from omnirag.gateway.api.models import retriever_collections
from omnirag.gateway.deps import Gateway, Key

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def without_credentials(url: str) -> str:
    """``url`` without the user-info's password (a Redis URL carries it): even an admin view shows
    no secrets, so it can be pasted into a ticket."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


@router.get("/status", summary="Upstream URLs, readiness details and each collection's detail (admin keys)")
async def status(request: Request, key: Key, gw: Gateway) -> JSONResponse:
    if not key.admin:
        raise Forbidden("this view needs an API key with admin: true", code="admin_only")
    s = gw.settings
    ready, readiness = await request.app.state.readiness.report(private=True)
    collections: list[dict[str, Any]] | None
    try:
        collections = await retriever_collections(gw)
        collections_error = None
    except OmniragError as exc:
        collections = None
        cause = exc.__cause__
        collections_error = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
    return JSONResponse(
        {
            "upstreams": {
                # The default model, as before the list; "models" has them all.
                "llm": {
                    "base_url": without_credentials(gw.registry.default.base_url),
                    "model": gw.registry.default.name,
                },
                "embedder": without_credentials(s.embedder_url),
                "retriever": without_credentials(s.retriever_url),
                "redis": without_credentials(s.redis_url),
            },
            "models": gw.registry.describe(),
            "ready": ready,
            "readiness": readiness["checks"],
            "collections": collections,
            "collections_error": collections_error,
        }
    )
