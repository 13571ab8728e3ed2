"""The shared service shell: health, readiness, metrics, request ids, body limits, JSON logs."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from omnirag.core.app import create_service_app
from omnirag.core.logging import JSONFormatter, configure_logging, request_id_var
from omnirag.core.settings import ServiceSettings


def make_app(**overrides):
    settings = ServiceSettings(**overrides)
    app = create_service_app("shell", settings)

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        logging.getLogger("omnirag.test").info("echo handled", extra={"keys": len(body)})
        return {"request_id": request_id_var.get(), "body": body}

    return app


@pytest.fixture
async def client():
    app = make_app(max_body_bytes=2048)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_healthz_is_always_ok(client):
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_reports_each_check_and_is_503_until_all_are_ok(client):
    readiness = client.app.state.readiness
    r = await client.get("/readyz")
    assert r.status_code == 503  # nothing registered yet is not "ready"

    readiness.set("model", False, "loading")

    async def dependency():
        return True, "reachable"

    readiness.add_probe("embedder", dependency)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["model"] == {"ok": False, "detail": "loading"}
    assert r.json()["checks"]["embedder"] == {"ok": True, "detail": "reachable"}

    readiness.set("model", True)
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"

    async def broken():
        raise ConnectionError("refused")

    readiness.add_probe("redis", broken)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert "refused" in r.json()["checks"]["redis"]["detail"]


async def test_request_id_is_kept_when_safe_and_made_when_missing(client):
    r = await client.post("/echo", json={"a": 1}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["request_id"] == "abc-123"

    r = await client.post("/echo", json={}, headers={"X-Request-ID": "bad id\nInjected: yes"})
    assert r.headers["x-request-id"] != "bad id\nInjected: yes"
    assert len(r.headers["x-request-id"]) == 32

    r = await client.get("/healthz")
    assert len(r.headers["x-request-id"]) == 32


async def test_metrics_count_requests_by_route_template_and_status(client):
    await client.post("/echo", json={})
    await client.get("/no/such/path/12345")
    text = (await client.get("/metrics")).text
    assert 'omnirag_shell_requests_total{method="POST",route="/echo",status="200"} 1.0' in text
    # Unknown paths share one label so that scanners cannot create unbounded series.
    assert 'route="unmatched"' in text and "12345" not in text
    assert "omnirag_shell_request_seconds_bucket" in text


async def test_body_over_the_limit_is_413_before_it_is_read(client):
    r = await client.post("/echo", json={"x": "a" * 4096})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_chunked_body_over_the_limit_is_refused(client):
    async def chunks():
        for _ in range(10):
            yield b"a" * 1024

    r = await client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code in (400, 413)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_json_logs_carry_the_request_id_and_extras(capsys, restore_logging):
    configure_logging("shell", "INFO", json=True)
    token = request_id_var.set("rid-42")
    try:
        logging.getLogger("omnirag.test").info("hello", extra={"texts": 3})
    finally:
        request_id_var.reset(token)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["msg"] == "hello" and record["request_id"] == "rid-42"
    assert record["service"] == "shell" and record["texts"] == 3 and record["level"] == "info"


def test_json_formatter_includes_exceptions():
    fmt = JSONFormatter("svc")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    out = json.loads(fmt.format(rec))
    assert "ValueError: boom" in out["exc"]
