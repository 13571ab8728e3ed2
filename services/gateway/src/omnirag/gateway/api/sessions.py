"""``GET`` / ``DELETE /v1/sessions/{id}``: a session's stored history, scoped to the caller's key."""

from __future__ import annotations

from fastapi import APIRouter

from omnirag.core.errors import NotFound
from omnirag.core.responses import JSONResponse
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.memory import check_session_id

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get("/{session_id}", summary="A session's messages (oldest first) and seconds until it expires")
async def get_session(session_id: str, key: Key, gw: Gateway) -> JSONResponse:
    check_session_id(session_id)
    messages = await gw.history.load(key.name, session_id)
    if not messages:
        raise NotFound(f"no session {session_id!r}", code="session_not_found")
    ttl = await gw.history.ttl_of(key.name, session_id)
    return JSONResponse({"id": session_id, "messages": messages, "expires_in": ttl})


@router.delete("/{session_id}", summary="Forget a session")
async def delete_session(session_id: str, key: Key, gw: Gateway) -> JSONResponse:
    check_session_id(session_id)
    deleted = await gw.history.delete(key.name, session_id)
    return JSONResponse({"id": session_id, "deleted": deleted})
