"""The chat answer as server-sent events: OpenAI's ``chat.completion.chunk`` events, the
``omnirag`` tail, the error event and ``[DONE]``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
# An SSE comment: it keeps a quiet stream's connection busy for the proxies on the way (idle
# timeouts of 30-60 s) and every SSE client, the OpenAI SDK's included, skips it.
KEEPALIVE = b": keep-alive\n\n"


def error_event(code: str, message: str) -> bytes:
    """The event a stream that can no longer answer with a status ends on (before ``[DONE]``)."""
    return sse({"error": {"code": code, "message": message}})


def envelope(cid: str, created: int, model: str) -> dict[str, Any]:
    """What every chunk of one answer repeats: its id, its time and the model entry answering."""
    return {"id": cid, "created": created, "model": model}


def chunk(head: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse(
        head
        | {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def tail(head: dict[str, Any], omnirag: dict[str, Any]) -> bytes:
    """The last chunk before ``[DONE]``: no choices, the ``omnirag`` object."""
    return sse(head | {"object": "chat.completion.chunk", "choices": [], "omnirag": omnirag})


async def canned(head: dict[str, Any], answer: str, omnirag: dict[str, Any]) -> AsyncGenerator[bytes, None]:
    """A whole answer known before the stream starts (no LLM call), as a stream."""
    yield chunk(head, {"role": "assistant", "content": ""})
    yield chunk(head, {"content": answer})
    yield chunk(head, {}, "stop")
    yield tail(head, omnirag)
    yield DONE
