"""ServiceClient against a real HTTP server: retries, backoff, Retry-After, timeouts, request ids."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse

from omnirag.core.app import create_service_app
from omnirag.core.errors import NotFound, Overloaded, UpstreamError
from omnirag.core.http import ServiceClient
from omnirag.core.logging import request_id_var
from omnirag.core.settings import ServiceSettings
from omnirag.core.testing import serve_in_thread


@pytest.fixture(scope="module")
def server():
    app = create_service_app("upstream", ServiceSettings())
    app.state.readiness.set("self", True)
    calls: dict[str, int] = {}

    def count(key: str) -> int:
        calls[key] = calls.get(key, 0) + 1
        return calls[key]

    @app.get("/flaky/{key}/{failures}")
    async def flaky(key: str, failures: int):
        n = count(key)
        if n <= failures:
            return JSONResponse({"error": {"code": "x", "message": "not yet"}}, status_code=503)
        return {"attempt": n}

    @app.get("/limited/{key}")
    async def limited(key: str):
        if count(key) == 1:
            return JSONResponse(
                {"error": {"code": "overloaded", "message": "full"}},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        return {"ok": True}

    @app.get("/always429")
    async def always429():
        return JSONResponse(
            {"error": {"code": "overloaded", "message": "full"}},
            status_code=429,
            headers={"Retry-After": "1"},
        )

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(5)
        return {}

    @app.get("/rid")
    async def rid(request: Request):
        return {"rid": request.headers.get("x-request-id")}

    @app.get("/bad")
    async def bad():
        return JSONResponse(
            {"error": {"code": "invalid_input", "message": "field x is wrong"}}, status_code=422
        )

    with serve_in_thread(app) as base:
        yield base, calls


async def test_retries_until_the_upstream_recovers(server):
    base, calls = server
    async with ServiceClient(base, retries=3, backoff=0.01) as client:
        body = await client.get_json("/flaky/a/2")
    assert body == {"attempt": 3} and calls["a"] == 3


async def test_gives_up_after_bounded_retries_with_a_clear_error(server):
    base, calls = server
    async with ServiceClient(base, name="retriever", retries=2, backoff=0.01) as client:
        with pytest.raises(UpstreamError, match=r"retriever failed after 3 attempt\(s\).*HTTP 503"):
            await client.get_json("/flaky/b/100")
    assert calls["b"] == 3


async def test_honours_retry_after_on_429(server):
    base, _ = server
    async with ServiceClient(base, retries=2, backoff=0.01) as client:
        started = time.monotonic()
        assert await client.get_json("/limited/c") == {"ok": True}
        assert time.monotonic() - started >= 0.9  # waited the server's Retry-After: 1


async def test_persistent_429_surfaces_as_overloaded(server):
    base, _ = server
    async with ServiceClient(base, retries=1, backoff=0.01, max_backoff=0.05) as client:
        with pytest.raises(Overloaded):
            await client.get_json("/always429")


async def test_timeouts_are_bounded(server):
    base, _ = server
    async with ServiceClient(base, timeout=0.3, retries=1, backoff=0.01) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamError, match="Timeout"):
            await client.get_json("/slow")
        assert time.monotonic() - started < 2.0


async def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with ServiceClient(f"http://127.0.0.1:{port}", name="embedder", retries=2, backoff=0.01) as client:
        with pytest.raises(UpstreamError, match="embedder failed after 3 attempt"):
            await client.get_json("/v1/info")


async def test_request_id_travels_to_the_next_service(server):
    base, _ = server
    token = request_id_var.set("trace-77")
    try:
        async with ServiceClient(base) as client:
            assert (await client.get_json("/rid")) == {"rid": "trace-77"}
    finally:
        request_id_var.reset(token)


async def test_client_errors_are_not_retried_and_keep_the_upstream_message(server):
    base, _ = server
    async with ServiceClient(base, name="embedder", retries=3, backoff=0.01) as client:
        with pytest.raises(UpstreamError, match="embedder answered 422: field x is wrong"):
            await client.get_json("/bad")
        with pytest.raises(NotFound):
            await client.get_json("/does-not-exist")
