"""``POST /v1/chat/completions``: OpenAI-compatible, streamed (SSE) or not.

The route reads its body itself (orjson, then ``ChatRequest.model_validate``) instead of letting
FastAPI inject it with ``Depends``: FastAPI's dependency solving and body validation took about a
quarter of a pass-through request's CPU (under cProfile 1.0 of 3.8 ms). The statuses, the error
bodies and their order are FastAPI's: malformed JSON is 422 before the key is checked, a missing or
wrong key is 401 before the fields are validated, invalid fields are 422 with ``loc`` under
``body``, and the OpenAPI document still shows the request schema and the key headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from omnirag.core.errors import (
    BadRequest,
    ClientGone,
    Forbidden,
    NotReady,
    OmniragError,
    Overloaded,
    PayloadTooLarge,
    TooDeeplyNested,
    Unauthorized,
    raises,
)
from omnirag.core.responses import JSONResponse
from omnirag.core.routing import MAX_JSON_DEPTH, json_depth_exceeds, loads_json
from omnirag.gateway.chat.request import ChatRequest
from omnirag.gateway.chat.sse import DONE, KEEPALIVE, error_event
from omnirag.gateway.chat.turn import Answer
from omnirag.gateway.deps import authenticated, get_gateway
from omnirag.gateway.llm import LLMError
from omnirag.gateway.registry import ModelNotFound

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["chat"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# What FastAPI would document for ``body: ChatRequest`` and the ``Key`` dependency's two headers.
_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "authorization", "in": "header", "required": False, "schema": {"type": "string"}},
        {"name": "x-api-key", "in": "header", "required": False, "schema": {"type": "string"}},
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
    },
}


def _json_body(request: Request, raw: bytes) -> Any:
    """The body as FastAPI reads it: JSON only when the content type says so (``application/json``
    or ``application/*+json``); otherwise the bytes, which validation then refuses."""
    if not raw:
        return None
    ctype = request.headers.get("content-type")
    if not ctype:
        return raw
    mime = ctype.partition(";")[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        return raw
    try:
        return loads_json(raw)  # bounded depth, as every other JSON route of every service
    except orjson.JSONDecodeError:
        pass
    try:  # what orjson refuses but the stdlib reads (NaN, UTF-16, lone surrogates), or its error
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from exc
    except UnicodeDecodeError as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    if json_depth_exceeds(payload):
        raise TooDeeplyNested(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    check_text(payload)
    return payload


def check_text(payload: Any) -> None:
    """Refuse a lone surrogate (JSON "\\ud800" without its pair) anywhere in the body.

    It is no character: no UTF-8 encoder takes it, so it would fail later and far from here (the
    history in Redis, the LLM call, the answer's JSON) as a 500. orjson refuses it, so only bodies
    that took the stdlib fallback can hold one; the walk is iterative, so no nesting depth can
    overflow it."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadRequest(
                    "the request holds a lone UTF-16 surrogate (such as \\ud800 without its pair), "
                    "which is not text",
                    code="invalid_text",
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _chat_request(payload: Any) -> ChatRequest:
    if payload is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return ChatRequest.model_validate(payload, from_attributes=True)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=payload) from None


@contextlib.asynccontextmanager
async def _cancelled_if_gone(receive: Receive) -> AsyncIterator[Callable[[], bool]]:
    """Run the block in this task; if the client hangs up meanwhile, cancel the block (and with it
    the LLM request) and leave it quietly. The yielded ``gone()`` tells whether that happened.

    One watcher task per block, no task for the work itself: cheaper than running the work in a
    task of its own beside the watcher, or Starlette's anyio task group around a stream."""
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        yield lambda: left
    except asyncio.CancelledError:
        # Ours only: a cancellation from elsewhere too (the server shutting down) goes on.
        if not left or task.uncancel() > 0:
            raise
    finally:
        watcher.cancel()


class EventStream(Response):
    """``text/event-stream`` from an async generator of SSE events, written as they come.

    With ``keepalive`` > 0 a keep-alive comment goes out after every ``keepalive`` seconds without
    an event (idle load balancers and proxies cut a silent connection): a timer notices the
    silence and a task of its own writes the comment; it and the loop that writes the events never
    write at once. The events are
    read only as fast as the client takes them, so a slow client still slows the reading of the
    LLM down, and nothing times out the generator itself (that would cancel the LLM stream).

    When the client hangs up, the generator is closed at once (which hangs up on the LLM)."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[bytes, None], headers: Mapping[str, str], keepalive: float = 0.0
    ) -> None:
        self.events = events
        self.keepalive = keepalive
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        loop = asyncio.get_running_loop()
        writing = asyncio.Lock()
        interval = self.keepalive
        last = loop.time()
        closed = False
        # A timer, not a task, watches for silence: an event costs only the time it was written at.
        timer: asyncio.TimerHandle | None = None
        beating: asyncio.Task[None] | None = None

        def due() -> None:
            nonlocal timer, beating
            if closed:
                return
            wait = last + interval - loop.time()
            if wait > 0:
                timer = loop.call_later(wait, due)
            else:
                beating = loop.create_task(beat())

        async def beat() -> None:
            nonlocal last, timer
            async with writing:
                if closed:
                    return
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                last = loop.time()
            timer = loop.call_later(interval, due)

        if interval > 0:
            timer = loop.call_later(interval, due)
        try:
            async with _cancelled_if_gone(receive) as gone, contextlib.aclosing(self.events) as events:
                async for event in events:
                    async with writing:
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                        last = loop.time()
        finally:
            closed = True
            if timer is not None:
                timer.cancel()
            if beating is not None and not beating.done():
                async with writing:  # never in the middle of a keep-alive
                    beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
        if not gone():
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _late_answer(
    work: asyncio.Future[Answer],
) -> AsyncGenerator[bytes, None]:
    """The stream of an answer whose first token is slower than the keep-alive interval.

    The response has to start before the answer is known (or the proxies cut the silent
    connection), so what would have been an error status comes as the error event and ``[DONE]``
    that a stream broken midway ends with."""
    try:
        yield KEEPALIVE  # one interval has passed already
        try:
            result = await work
        except OmniragError as exc:
            yield error_event(exc.code, exc.message)
            yield DONE
            return
        except Exception as exc:
            log.exception(
                "a streamed answer failed before its first token", extra={"error": type(exc).__name__}
            )
            yield error_event("internal_error", "internal error")
            yield DONE
            return
        if isinstance(result, dict):  # not for a streamed request today; kept correct regardless
            yield b"data: " + json.dumps(result).encode() + b"\n\n"
            yield DONE
            return
        async with contextlib.aclosing(result) as events:
            async for event in events:
                yield event
    finally:
        if not work.done():
            work.cancel()


@router.post(
    "/chat/completions",
    summary="OpenAI-compatible chat, with RAG over a collection",
    openapi_extra=_OPENAPI,
)
# The key check's errors too: it is called here, not declared as a dependency.
@raises(Unauthorized, Forbidden, Overloaded, BadRequest, PayloadTooLarge, ModelNotFound, LLMError, NotReady)
async def chat_completions(request: Request) -> Response:
    payload = _json_body(request, await request.body())
    headers = request.headers
    key = await authenticated(request, headers.get("authorization"), headers.get("x-api-key"))
    body = _chat_request(payload)
    gateway = get_gateway(request)
    interval = gateway.settings.sse_keepalive_seconds
    if body.stream and interval > 0:
        return await _kept_alive_answer(request, gateway.chat.handle(key, body), interval)
    result: Answer | None = None
    async with _cancelled_if_gone(request.receive):
        result = await gateway.chat.handle(key, body)
    if result is None:
        raise ClientGone("the client disconnected before the answer was ready")
    if isinstance(result, dict):
        return JSONResponse(result)
    return EventStream(result, headers=SSE_HEADERS)


async def _kept_alive_answer(
    request: Request,
    answer: Coroutine[Any, Any, Answer],
    interval: float,
) -> Response:
    """A streamed answer with keep-alive comments in every silence longer than ``interval``.

    An answer whose first token comes within one interval starts as before (a failure until then
    is still a status); a slower one starts the stream with a comment and keeps it alive until the
    first token."""
    work = asyncio.ensure_future(answer)
    handed_over = False
    try:
        async with _cancelled_if_gone(request.receive) as gone:
            await asyncio.wait({work}, timeout=interval)
        if gone():
            raise ClientGone("the client disconnected before the answer was ready")
        if work.done():
            result = work.result()
            handed_over = True
            if isinstance(result, dict):
                return JSONResponse(result)
            return EventStream(result, headers=SSE_HEADERS, keepalive=interval)
        handed_over = True
        return EventStream(_late_answer(work), headers=SSE_HEADERS, keepalive=interval)
    finally:
        if not handed_over:
            if not work.done():
                work.cancel()  # the client left: so does the LLM request
            elif not work.cancelled() and work.exception() is None:
                left = work.result()
                if not isinstance(left, dict):
                    await left.aclose()
