"""Failure paths, each injected for real: a retriever that is stopped, a Redis server that is killed,
an LLM that is down, and an LLM whose stream breaks half-way (a scripted upstream — the one fake
here — because a real server cannot be made to break at an exact point)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from omnirag_harness.gateway_stack import AUTH, DEV_KEY
from omnirag_harness.servers import metric_value, redis_server, serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from omnirag.retriever.app import create_app as create_retriever
from omnirag.retriever.config import RetrieverSettings


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=DEV_KEY, max_retries=0, timeout=60)


class ScriptedLLM:
    """An OpenAI-protocol upstream that streams ``pieces`` and then either finishes or breaks the
    connection; it records whether the gateway hung up on it."""

    def __init__(self, pieces: list[str], *, break_after: int | None = None, delay: float = 0.0) -> None:
        self.pieces = pieces
        self.break_after = break_after
        self.delay = delay
        self.cancelled = asyncio.Event()
        self.cancelled_flag = False
        self.requests = 0

    def app(self) -> Starlette:
        async def completions(request: Request) -> StreamingResponse:
            await request.json()
            self.requests += 1

            async def events() -> AsyncIterator[bytes]:
                try:
                    for i, piece in enumerate(self.pieces):
                        if self.break_after is not None and i == self.break_after:
                            raise RuntimeError("injected upstream failure")
                        chunk = {
                            "id": "x",
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": "m",
                            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                        }
                        yield f"data: {json.dumps(chunk)}\n\n".encode()
                        await asyncio.sleep(self.delay)
                    yield b"data: [DONE]\n\n"
                except asyncio.CancelledError:
                    self.cancelled_flag = True
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        async def models(request: Request) -> StreamingResponse:
            return StreamingResponse(iter([b'{"object":"list","data":[]}']), media_type="application/json")

        return Starlette(
            routes=[Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models)]
        )


def test_retriever_down_gives_a_degraded_answer_quickly(
    gateway_factory, embedder_url: str, index_root
) -> None:  # type: ignore[no-untyped-def]
    app = create_retriever(
        RetrieverSettings(index_root=index_root, embedder_url=embedder_url, log_json=False)
    )
    with serve_in_thread(app) as retriever:
        pass  # started and stopped: its port now refuses connections, as a killed pod's would
    with gateway_factory(retriever_url=retriever) as base:
        started = time.monotonic()
        stream = client(base).chat.completions.create(
            model="omnirag",
            messages=[{"role": "user", "content": "Which port does the gateway listen on?"}],
            max_tokens=16,
            stream=True,
        )
        first_at = None
        tail = None
        for chunk in stream:
            if first_at is None:
                first_at = time.monotonic() - started
            tail = (chunk.model_extra or {}).get("omnirag") or tail
        assert tail is not None and tail["degraded"] == ["retriever"] and tail["citations"] == []
        assert first_at is not None
        metrics = httpx.get(base + "/metrics").text
        assert metric_value(metrics, "omnirag_gateway_degraded_total", 'part="retriever"') >= 1
        # The gateway gave up on the dead retriever at once: everything before the LLM call took
        # under 2 s (the rest is the LLM's own speed, which a busy 2-core machine slows).
        prep = metric_value(metrics, "omnirag_gateway_rag_prep_seconds_sum")
        assert prep < 2.0, f"RAG preparation took {prep:.2f}s with the retriever down"
    with gateway_factory(retriever_url=retriever, retrieval_fail_closed=True) as base:
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Which port?"}]},
            headers=AUTH,
            timeout=30,
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "retriever_unavailable"


def test_redis_down_chat_still_answers(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with redis_server(str(tmp_path)) as url:
        pass  # the server is gone once the block ends
    with gateway_factory(redis_url=url, redis_timeout=0.5) as base:
        r = client(base).chat.completions.create(
            model="omnirag",
            messages=[{"role": "user", "content": "Which port does the gateway listen on?"}],
            max_tokens=16,
            extra_body={"session_id": "while-redis-is-down"},
        )
        assert r.choices[0].message.content
        assert r.model_extra["omnirag"]["degraded"] == ["history"]
        ready = httpx.get(base + "/readyz").json()
        assert "down" in ready["checks"]["redis"]["detail"]


def test_sessions_while_redis_is_down_are_503_with_retry_after(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with redis_server(str(tmp_path)) as url:
        pass  # the server is gone once the block ends
    with gateway_factory(redis_url=url, redis_timeout=0.5) as base:
        for method in ("GET", "DELETE"):
            r = httpx.request(method, base + "/v1/sessions/some-session", headers=AUTH, timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "history_unavailable"
            assert int(r.headers["retry-after"]) >= 1


def test_llm_down_is_a_clear_502(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    with gateway_factory(llm_base_url="http://127.0.0.1:9/v1", llm_connect_retries=0) as base:
        for stream in (False, True):
            r = httpx.post(
                base + "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Which port does the gateway use?"}],
                    "stream": stream,
                },
                headers=AUTH,
                timeout=30,
            )
            assert r.status_code == 502, r.text
            assert r.json()["error"]["code"] == "llm_error"
            assert "LLM" in r.json()["error"]["message"]


@pytest.mark.parametrize("rag", [True, False])
def test_stream_that_breaks_midway_ends_with_an_error_and_no_repeated_text(
    gateway_factory, rag: bool
) -> None:  # type: ignore[no-untyped-def]
    upstream = ScriptedLLM(["Hel", "lo ", "wor", "ld"], break_after=2, delay=0.05)
    with (
        serve_in_thread(upstream.app(), ready_path=None) as llm,
        gateway_factory(llm_base_url=llm + "/v1") as base,
    ):
        body = {
            "messages": [{"role": "user", "content": "Which port does the gateway listen on?"}],
            "stream": True,
            "rag": rag,
        }
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
            raw = r.read().decode()
            assert r.status_code == 200, raw
            events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert "error" in payloads[-1] and payloads[-1]["error"]["code"] == "llm_error"
    text = "".join(
        (c.get("delta") or {}).get("content") or "" for p in payloads if "choices" in p for c in p["choices"]
    )
    assert text == "Hello "
    assert upstream.requests == 1, "a stream that has started is never retried"


def test_client_that_hangs_up_cancels_the_llm_request(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    upstream = ScriptedLLM(["tick "] * 200, delay=0.05)
    with (
        serve_in_thread(upstream.app(), ready_path=None) as llm,
        gateway_factory(llm_base_url=llm + "/v1") as base,
    ):
        body = {"messages": [{"role": "user", "content": "count"}], "stream": True, "rag": False}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
            for _ in r.iter_bytes():
                break  # read the first bytes, then hang up
        deadline = time.monotonic() + 5
        while not upstream.cancelled_flag and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.cancelled_flag, "the upstream stream was not cancelled after the client left"
