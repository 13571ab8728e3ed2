"""``POST /v1/feedback``: a thumbs up or down on an answer, and ``GET /v1/feedback`` to read them back.

A rating names the answer by the ``id`` of its chat completion (``chatcmpl-…``, the same in every
streamed chunk) and/or by its index in the conversation, with the session it belongs to. Ratings
are appended to a Redis stream per principal (``omnirag:feedback:<key>[/<user>]``: each user of
the UI's trusted key has their own), capped at ``MAX_ENTRIES`` and expiring ``TTL_SECONDS`` after
the last rating, so feedback can never grow without bound; a client that changes its mind sends a
new rating and readers keep the newest one per message. Each rating is also counted in
``omnirag_gateway_feedback_total{rating}``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from omnirag.core.errors import NotReady
from omnirag.core.responses import JSONResponse
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.memory import SESSION_ID
from omnirag.gateway.replies import text, text_fields

router = APIRouter(prefix="/v1", tags=["feedback"])

# Long enough to review a quarter's answers; bounded so a key that rates in a loop cannot fill Redis.
TTL_SECONDS = 90 * 24 * 3600
MAX_ENTRIES = 10_000
MAX_COMMENT_CHARS = 2000
MAX_LIST = 500


def stream_key(owner: str) -> str:
    return f"omnirag:feedback:{owner}"


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: Literal["up", "down"]
    session_id: str | None = Field(None, pattern=SESSION_ID.pattern)
    message_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="The answer's chat completion id (chatcmpl-…).",
    )
    message_index: int | None = Field(
        None, ge=0, le=100_000, description="The answer's position in the conversation (0 = first message)."
    )
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)

    @model_validator(mode="after")
    def _names_a_message(self) -> Feedback:
        if self.message_id is None and self.message_index is None:
            raise ValueError("give message_id (the answer's chatcmpl id) or message_index")
        if self.message_id is None and self.session_id is None:
            raise ValueError("a message_index needs the session_id it counts in")
        return self


@router.post("/feedback", status_code=201, summary="Rate an answer: thumbs up or down, with a comment")
async def post_feedback(body: Feedback, key: Key, gw: Gateway) -> JSONResponse:
    entry: dict[FieldT, EncodableT] = {
        "rating": body.rating,
        "session_id": body.session_id or "",
        "message_id": body.message_id or "",
        "message_index": "" if body.message_index is None else str(body.message_index),
        "comment": (body.comment or "").strip(),
        "created_at": f"{time.time():.3f}",
    }
    name = stream_key(key.principal)
    try:
        async with gw.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(name, entry, maxlen=MAX_ENTRIES, approximate=True)
            pipe.expire(name, TTL_SECONDS)
            entry_id, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise NotReady(
            f"feedback cannot be stored right now: Redis is down ({type(exc).__name__})",
            code="feedback_unavailable",
        ) from None
    gw.metrics.feedback.labels(body.rating).inc()
    return JSONResponse({"id": entry_id, "stored": True, "rating": body.rating}, status_code=201)


def _entry(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    index = fields.get("message_index") or ""
    return {
        "id": entry_id,
        "rating": fields.get("rating"),
        "session_id": fields.get("session_id") or None,
        "message_id": fields.get("message_id") or None,
        "message_index": int(index) if index.isdigit() else None,
        "comment": fields.get("comment") or None,
        "created_at": float(fields.get("created_at") or 0),
    }


@router.get("/feedback", summary="This key's ratings, newest first")
async def list_feedback(
    key: Key,
    gw: Gateway,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    session_id: Annotated[str | None, Query(pattern=SESSION_ID.pattern)] = None,
) -> JSONResponse:
    try:
        raw = await gw.redis.xrevrange(stream_key(key.principal), count=MAX_LIST if session_id else limit)
    except (RedisError, OSError) as exc:
        raise NotReady(
            f"feedback cannot be read right now: Redis is down ({type(exc).__name__})",
            code="feedback_unavailable",
        ) from None
    items = [_entry(text(i), text_fields(f)) for i, f in raw or []]
    if session_id:
        items = [i for i in items if i["session_id"] == session_id][:limit]
    return JSONResponse({"object": "list", "data": items})
