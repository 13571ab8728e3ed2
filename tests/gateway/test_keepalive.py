"""SSE keep-alive comments: a streamed answer stays busy while the LLM is slow, so load balancers
with a 30-60 s idle timeout do not cut it.

The upstream LLM is a real HTTP server in the test that holds its first token, and the next ones,
until the test has seen keep-alive comments arrive: the test waits for events, not for time. Its
wait is bounded (HOLD), so a gateway that sends no comment fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from omnirag_harness.gateway_stack import AUTH, DEV_KEY
from omnirag_harness.servers import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

INTERVAL = 0.2  # GATEWAY_SSE_KEEPALIVE_SECONDS in these tests
HOLD = 10.0  # the longest the upstream holds a token back when no comment comes
COMMENT = ": keep-alive"
QUESTION = "Which port does the gateway listen on?"


class HeldLLM:
    """An OpenAI-protocol upstream that streams ``pieces``, holding the first until ``first`` is set
    and the rest until ``rest`` is set (each at most HOLD seconds). ``fail`` breaks the connection
    instead of sending the first token."""

    def __init__(self, pieces: list[str], *, fail: bool = False) -> None:
        self.pieces = pieces
        self.fail = fail
        self.first = threading.Event()
        self.rest = threading.Event()

    def app(self) -> Starlette:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            body = {
                "id": "held",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(body)}\n\n".encode()

        async def completions(request: Request) -> StreamingResponse:
            await request.json()

            async def events() -> AsyncIterator[bytes]:
                await asyncio.to_thread(self.first.wait, HOLD)
                if self.fail:
                    raise RuntimeError("injected upstream failure before the first token")
                yield chunk({"role": "assistant", "content": self.pieces[0]})
                await asyncio.to_thread(self.rest.wait, HOLD)
                for piece in self.pieces[1:]:
                    yield chunk({"content": piece})
                yield chunk({}, "stop")
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture
def held(request: pytest.FixtureRequest, gateway_factory: Any) -> Iterator[tuple[HeldLLM, str]]:
    upstream = HeldLLM(["Port ", "8000", "."], fail=getattr(request, "param", False))
    with (
        serve_in_thread(upstream.app(), ready_path=None) as llm,
        gateway_factory(llm_base_url=llm + "/v1", sse_keepalive_seconds=INTERVAL) as base,
    ):
        yield upstream, base
    upstream.first.set()
    upstream.rest.set()


def read_events(base: str, upstream: HeldLLM, body: dict[str, Any]) -> tuple[list[str], int, int]:
    """(every SSE event in order, comments before the first token, comments between tokens).

    Releases the upstream's first token after two comments and the rest after one more."""
    events: list[str] = []
    before = between = 0
    seen_token = False
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200, r.read()
        buffer = ""
        for text in r.iter_text():
            buffer += text
            while "\n\n" in buffer:
                event, buffer = buffer.split("\n\n", 1)
                events.append(event)
                if event == COMMENT:
                    if seen_token:
                        between += 1
                        upstream.rest.set()
                    else:
                        before += 1
                        if before >= 2:
                            upstream.first.set()
                elif event.startswith("data: {") and '"content":"' in event.replace(" ", ""):
                    payload = json.loads(event[6:])
                    if any((c.get("delta") or {}).get("content") for c in payload.get("choices") or []):
                        seen_token = True
    return events, before, between


def content_of(events: list[str]) -> str:
    out = ""
    for event in events:
        if event.startswith("data: {"):
            for choice in json.loads(event[6:]).get("choices") or []:
                out += (choice.get("delta") or {}).get("content") or ""
    return out


@pytest.mark.parametrize("rag", [True, False], ids=["rag", "pass-through"])
def test_comments_keep_a_slow_stream_alive_before_and_between_tokens(
    held: tuple[HeldLLM, str], rag: bool
) -> None:
    upstream, base = held
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "rag": rag}
    events, before, between = read_events(base, upstream, body)
    assert before >= 2, f"no keep-alive comment while the LLM held its first token: {events[:5]}"
    assert between >= 1, f"no keep-alive comment between tokens: {events}"
    assert content_of(events) == "Port 8000."
    assert events[-1] == "data: [DONE]"
    tail = json.loads(events[-2][6:])
    assert "omnirag" in tail, "the omnirag object still ends the stream"


class Tap(httpx.HTTPTransport):
    """The openai client's transport, letting the test see the raw bytes it parses."""

    def __init__(self, on_bytes: Any) -> None:
        super().__init__()
        self.on_bytes = on_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        inner = response.stream
        on_bytes = self.on_bytes

        class Tapped(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                assert isinstance(inner, httpx.SyncByteStream)
                for piece in inner:
                    on_bytes(piece)
                    yield piece

            def close(self) -> None:
                assert isinstance(inner, httpx.SyncByteStream)
                inner.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Tapped(), request=request
        )


def test_the_openai_client_parses_a_stream_with_comments(held: tuple[HeldLLM, str]) -> None:
    upstream, base = held
    raw = bytearray()

    def on_bytes(piece: bytes) -> None:
        raw.extend(piece)
        if raw.count(COMMENT.encode()) >= 2:
            upstream.first.set()
            upstream.rest.set()

    client = openai.OpenAI(
        base_url=base + "/v1",
        api_key=DEV_KEY,
        max_retries=0,
        timeout=60,
        http_client=httpx.Client(transport=Tap(on_bytes)),
    )
    stream = client.chat.completions.create(
        model="omnirag",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        extra_body={"rag": True},
    )
    text = ""
    tail = None
    for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        tail = (chunk.model_extra or {}).get("omnirag") or tail
    first_token = raw.find(b'"content":"Port ')
    assert 0 <= raw.find(COMMENT.encode()) < first_token, "no comment came before the first token"
    assert text == "Port 8000."
    assert tail is not None and "citations" in tail


@pytest.mark.parametrize("held", [True], indirect=True, ids=["llm-fails"])
def test_a_first_token_that_never_comes_ends_the_kept_alive_stream_with_an_error(
    held: tuple[HeldLLM, str],
) -> None:
    """Once a comment has started the response, a failing LLM can no longer be a 502: the stream
    ends the way a stream broken midway does, with an error event and [DONE]."""
    upstream, base = held
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "rag": True}
    events, before, _ = read_events(base, upstream, body)
    assert before >= 2
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "llm_error", error
    assert content_of(events) == ""
