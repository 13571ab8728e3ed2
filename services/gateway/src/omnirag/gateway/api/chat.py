"""``POST /v1/chat/completions``: OpenAI-compatible, streamed (SSE) or not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from omnirag.core.errors import ClientGone
from omnirag.core.responses import JSONResponse
from omnirag.gateway.chat import ChatRequest
from omnirag.gateway.deps import Gateway, Key

router = APIRouter(prefix="/v1", tags=["chat"])
T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client hangs up first, cancel it (and with it the LLM request)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone("the client disconnected before the answer was ready")


@router.post("/chat/completions", summary="OpenAI-compatible chat, with RAG over a collection")
async def chat_completions(body: ChatRequest, request: Request, key: Key, gw: Gateway) -> Any:
    result = await _until_disconnect(request, gw.chat.handle(key, body))
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)
