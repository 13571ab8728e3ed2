"""``GET`` / ``DELETE /v1/sessions/{id}``: a session's stored history, scoped to the caller's key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from omnirag.core.errors import NotFound
from omnirag.core.responses import JSONResponse
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.memory import HistoryUnavailable, check_session_id

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@contextmanager
def _redis_reachable() -> Iterator[None]:
    """Redis down or too slow is an outage the client can wait out (503 with Retry-After), not a
    bug (500). Other Redis errors stay 500: retrying would not fix them."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise HistoryUnavailable(f"session history is unavailable right now ({type(exc).__name__})") from exc


@router.get("/{session_id}", summary="A session's messages (oldest first) and seconds until it expires")
async def get_session(session_id: str, key: Key, gw: Gateway) -> JSONResponse:
    check_session_id(session_id)
    with _redis_reachable():
        messages = await gw.history.load(key.principal, session_id)
        if not messages:
            raise NotFound(f"no session {session_id!r}", code="session_not_found")
        ttl = await gw.history.ttl_of(key.principal, session_id)
    return JSONResponse({"id": session_id, "messages": messages, "expires_in": ttl})


@router.delete("/{session_id}", summary="Forget a session")
async def delete_session(session_id: str, key: Key, gw: Gateway) -> JSONResponse:
    check_session_id(session_id)
    with _redis_reachable():
        deleted = await gw.history.delete(key.principal, session_id)
    return JSONResponse({"id": session_id, "deleted": deleted})
