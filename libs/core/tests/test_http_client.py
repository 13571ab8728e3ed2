"""ServiceClient against a real HTTP server: retries, backoff, Retry-After, timeouts, request ids,
and the circuit breaker (its state machine on a hand-moved clock, and against a real hung server)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse
from omnirag_harness.servers import serve_in_thread

from omnirag.core.app import create_service_app
from omnirag.core.errors import NotFound, Overloaded, UpstreamError
from omnirag.core.http import CircuitBreaker, CircuitOpen, ServiceClient
from omnirag.core.logging import request_id_var
from omnirag.core.settings import ServiceSettings


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


# ---------- circuit breaker ----------


class Clock:
    """The breaker's clock, moved by hand: the cool-down is a mechanism under test, not a wait."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[tuple[str, str]] | None = None, **kwargs: Any) -> CircuitBreaker:
    on_change = (lambda name, state: changes.append((name, state))) if changes is not None else None
    return CircuitBreaker("retriever", clock=clock, on_change=on_change, **kwargs)


def test_breaker_opens_after_n_consecutive_failures_only() -> None:
    b = breaker(Clock(), failures_to_open=3, cooldown=10)
    for _ in range(2):
        assert b.admit() is False
        b.record(False)
    b.admit()
    b.record(True)  # a success in between resets the count
    for _ in range(2):
        b.admit()
        b.record(False)
    assert b.state == "closed"
    b.admit()
    b.record(False)
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        b.admit()
    assert refused.value.upstream == "retriever" and refused.value.retry_after == 10


def test_breaker_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    b = breaker(clock, changes, failures_to_open=1, cooldown=5)
    b.admit()
    b.record(False)
    clock.now += 4
    with pytest.raises(CircuitOpen) as refused:
        b.admit()
    assert refused.value.retry_after == 1  # what is left of the cool-down, whole seconds
    clock.now += 1
    assert b.admit() is True  # the probe
    assert b.state == "half_open"
    with pytest.raises(CircuitOpen):
        b.admit()  # one probe at a time: the others are still refused
    b.record(True, probe=True)
    assert b.state == "closed" and b.admit() is False
    assert changes == [
        ("retriever", "closed"),
        ("retriever", "open"),
        ("retriever", "half_open"),
        ("retriever", "closed"),
    ]


def test_breaker_failed_probe_opens_for_another_cooldown() -> None:
    clock = Clock()
    b = breaker(clock, failures_to_open=2, cooldown=5)
    for _ in range(2):
        b.admit()
        b.record(False)
    clock.now += 5
    assert b.admit() is True
    clock.now += 3  # the probe took 3 s and failed: the new cool-down starts from its end
    b.record(False, probe=True)
    assert b.state == "open"
    clock.now += 4
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.now += 1
    assert b.admit() is True


def test_breaker_cancelled_probe_frees_the_probe_slot() -> None:
    clock = Clock()
    b = breaker(clock, failures_to_open=1, cooldown=1)
    b.admit()
    b.record(False)
    clock.now += 1
    assert b.admit() is True
    b.release(True)  # the caller left before the probe ended
    assert b.state == "half_open" and b.admit() is True


def test_breaker_ignores_late_answers_of_calls_made_before_it_opened() -> None:
    clock = Clock()
    b = breaker(clock, failures_to_open=1, cooldown=10)
    b.admit()
    b.admit()  # two calls out at once
    b.record(False)
    assert b.state == "open"
    b.record(True)  # the other one answered late: says nothing about the upstream now
    assert b.state == "open"
    clock.now += 5
    b.record(False)  # nor does a late failure restart the cool-down
    clock.now += 5
    assert b.admit() is True


def test_breaker_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures_to_open=0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", cooldown=0)


@contextmanager
def hung_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A real server that accepts connections and never answers (a hung process); yields its URL
    and the connections it accepted."""
    accepted: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in accepted:
            conn.close()


async def test_service_client_stops_calling_a_hung_upstream_once_its_breaker_opens() -> None:
    with hung_server() as (base, accepted):
        b = CircuitBreaker("retriever", failures_to_open=2, cooldown=60)
        async with ServiceClient(base, name="retriever", timeout=0.2, retries=0, breaker=b) as client:
            for _ in range(2):
                with pytest.raises(UpstreamError, match="Timeout"):
                    await client.get_json("/v1/collections")
            assert b.state == "open"
            for _ in range(5):
                with pytest.raises(UpstreamError) as refused:
                    await client.get_json("/v1/collections")
                assert refused.value.code == "upstream_unavailable"
                assert refused.value.details["retry_after"] >= 1
        # Two calls reached the hung server; the five after the breaker opened never left.
        assert len(accepted) == 2


async def test_service_client_breaker_closes_when_the_probe_finds_the_upstream_back(server) -> None:
    base, calls = server
    clock = Clock()
    b = CircuitBreaker("upstream", failures_to_open=1, cooldown=5, clock=clock)
    async with ServiceClient(base, retries=0, breaker=b) as client:
        with pytest.raises(UpstreamError):
            await client.get_json("/flaky/probe/1")  # 503 once: counts as a failure
        assert b.state == "open"
        with pytest.raises(UpstreamError, match="circuit open"):
            await client.get_json("/flaky/probe/1")
        assert calls["probe"] == 1
        clock.now += 5
        assert await client.get_json("/flaky/probe/1") == {"attempt": 2}
        assert b.state == "closed"
