"""The shared service shell: health, readiness, metrics, request ids, body limits, JSON logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.testclient import TestClient
from omnirag_harness.servers import serve_in_thread

from omnirag.core.app import ReadinessReport, create_service_app
from omnirag.core.errors import NotFound, NotReady, Overloaded, TooDeeplyNested, Unauthorized, raises
from omnirag.core.logging import JSONFormatter, configure_logging, request_id_var
from omnirag.core.routing import MAX_JSON_DEPTH, OrjsonRoute, loads_json
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
    ReadinessReport.model_validate(r.json())  # what the OpenAPI document says it is
    assert r.json()["checks"]["embedder"] == {"ok": True, "detail": "reachable"}

    readiness.set("model", True)
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"

    async def broken():
        raise ConnectionError("refused")

    readiness.add_probe("redis", broken)
    r = await client.get("/readyz")
    assert r.status_code == 503
    # The exception's text is for operators (the log, report(private=True)), not for /readyz.
    assert r.json()["checks"]["redis"] == {"ok": False, "detail": "check failed"}
    _, private = await readiness.report(private=True)
    assert private["checks"]["redis"]["info"] == "ConnectionError: refused"


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


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The shell served by uvicorn on a socket, with a JSON body parsed by FastAPI's own parser
    (``/echo``), by the OrjsonRoute (``/orjson``) and read by the endpoint itself (``/raw``)."""
    app = make_app(max_body_bytes=2048)
    router = APIRouter(route_class=OrjsonRoute)

    @router.post("/orjson")
    async def orjson_echo(body: dict) -> dict:
        return {"keys": len(body)}

    @router.post("/raw")
    async def raw(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    app.include_router(router)
    with serve_in_thread(app, ready_path="/healthz") as base:
        yield base


@pytest.mark.parametrize("path", ["/echo", "/orjson", "/raw"])
def test_chunked_body_over_the_limit_is_413_over_a_real_socket(served, path):
    """No Content-Length (httpx sends a generator as Transfer-Encoding: chunked): the limit trips
    while the body is read, and the answer is still 413, not the 400 of a body that failed to parse."""

    def chunks() -> Iterator[bytes]:
        yield b'{"x": "'
        for _ in range(10):
            yield b"a" * 1024
        yield b'"}'

    with httpx.Client(base_url=served, timeout=30) as c:
        r = c.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"
        # a chunked body under the limit is still served
        r = c.post(path, content=iter([b'{"a": ', b"1}"]), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text


def nested_app() -> TestClient:
    """Routes that parse a body three ways: FastAPI's own parser (the stdlib json), OrjsonRoute,
    and by hand with the stdlib, as a route that reads its body itself may (the gateway's chat)."""
    app = make_app(max_body_bytes=1024 * 1024)
    router = APIRouter(route_class=OrjsonRoute)

    @router.post("/orjson")
    async def orjson_echo(body: dict) -> dict:
        return {"keys": len(body)}

    @app.post("/by-hand")
    async def by_hand(request: Request) -> dict:
        return {"keys": len(json.loads(await request.body()))}

    app.include_router(router)
    return TestClient(app, raise_server_exceptions=False)


def nested(depth: int) -> bytes:
    """An object whose "a" holds arrays: ``depth`` levels of arrays and objects in all."""
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("path", ["/echo", "/orjson", "/by-hand"])
@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_json_is_a_400_with_a_stable_code(depth, path):
    """Far deeper than any real request: a 400 ``too_deeply_nested`` whichever parser meets it
    (the stdlib's RecursionError, orjson's depth limit), never a 500."""
    with nested_app() as c:
        r = c.post(path, content=nested(depth), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "too_deeply_nested"


def test_orjson_routes_take_json_up_to_the_depth_bound():
    with nested_app() as c:
        ok = c.post("/orjson", content=nested(MAX_JSON_DEPTH), headers={"content-type": "application/json"})
        deep = c.post(
            "/orjson", content=nested(MAX_JSON_DEPTH + 1), headers={"content-type": "application/json"}
        )
        vector = c.post("/orjson", json={"vector": [0.5] * 4096, "k": [[1]]})
    assert ok.status_code == 200 and ok.json() == {"keys": 1}
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "too_deeply_nested"
    assert str(MAX_JSON_DEPTH) in deep.json()["error"]["message"]
    assert vector.status_code == 200


def test_loads_json_bounds_depth_and_keeps_orjsons_errors():
    assert loads_json(b'{"a": [1, {"b": [2]}]}') == {"a": [1, {"b": [2]}]}
    assert loads_json(nested(MAX_JSON_DEPTH).decode()) == loads_json(nested(MAX_JSON_DEPTH))
    # brackets inside strings are counted but never refused
    assert loads_json(b'{"s": "' + b"[" * 500 + b'"}') == {"s": "[" * 500}
    for deep in (nested(MAX_JSON_DEPTH + 1), nested(2000), b"[" * 100_000):
        with pytest.raises(TooDeeplyNested):
            loads_json(deep)
    with pytest.raises(json.JSONDecodeError):
        loads_json(b"{not json")


def test_the_openapi_schema_documents_the_house_errors_and_metrics_as_text():
    """Every operation declares the error body it really sends (its statuses from the error table,
    and any other status as ``default``), not FastAPI's own 422 shape; /metrics is text (checked
    against the real services by tests/api)."""
    schema = make_app().openapi()
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert responses["default"]["content"]["application/json"]["schema"] == error, (method, path)
            assert responses["500"]["content"]["application/json"]["schema"] == error, (method, path)
    # By what the route takes: a body can fail to parse (400), be too large (413) or invalid (422).
    echo = schema["paths"]["/echo"]["post"]["responses"]
    assert {"400", "413", "422", "500"} <= set(echo)
    for status in ("400", "413", "422"):
        assert echo[status]["content"]["application/json"]["schema"] == error
    assert "invalid_input" in echo["422"]["description"]
    assert "payload_too_large" in echo["413"]["description"]
    # Nothing to validate, nothing to parse: only what every route can answer.
    assert set(schema["paths"]["/healthz"]["get"]["responses"]) == {"200", "500", "default"}
    # /readyz's 503 is its report, documented as such, not an error body.
    ready = schema["paths"]["/readyz"]["get"]["responses"]
    assert ready["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReadinessReport"
    }
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


@raises(Unauthorized, Overloaded)
async def caller(authorization: Annotated[str | None, Header()] = None) -> str:
    return authorization or ""


def test_declared_errors_come_from_the_table_on_every_route_that_runs_them():
    """``raises`` on a dependency documents its errors on each route that uses it, on a handler
    on its own route; the status and the body come from the error table, 429 with Retry-After."""
    app = create_service_app("shell", ServiceSettings())
    # Included with a prefix and a dependency of its own, as the services' routers are.
    router = APIRouter(prefix="/things", dependencies=[Depends(caller)])

    @router.get("/{name}")
    @raises(NotFound, NotReady)
    async def thing(name: str) -> dict:
        return {}

    app.include_router(router, prefix="/v1")

    @app.get("/v1/open", responses={404: {"description": "its own words"}})
    @raises(NotFound)
    async def open_() -> dict:
        return {}

    paths = TestClient(app).get("/openapi.json").json()["paths"]
    responses = paths["/v1/things/{name}"]["get"]["responses"]
    assert {"401", "404", "422", "429", "500", "503"} <= set(responses)
    for status in ("401", "404", "429", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    assert "not_ready" in responses["503"]["description"]
    assert "Retry-After" in responses["429"]["headers"]
    assert "400" not in responses and "413" not in responses  # no body
    assert paths["/v1/open"]["get"]["responses"]["404"]["description"] == "its own words"  # kept
    assert "422" not in paths["/v1/open"]["get"]["responses"]


def test_the_service_token_s_401_is_on_every_route_but_the_open_ones():
    paths = token_app(TOKEN).openapi()["paths"]  # /openapi.json itself needs the token
    assert "invalid_service_token" in paths["/v1/work"]["post"]["responses"]["401"]["description"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "401" not in paths[path]["get"]["responses"], path
    assert "401" not in token_app(None).openapi()["paths"]["/v1/work"]["post"]["responses"]


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


# ---------- exposure: what /readyz shows, the shared service token ----------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def health_log():
    """What omnirag.health logs, caught at its own logger (whatever the root logging setup is)."""
    logger = logging.getLogger("omnirag.health")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_readyz_shows_states_not_urls_paths_or_errors(client, health_log):
    """A probe's detail is public; its info (URLs, paths, exception text) goes only to the log and
    to report(private=True). URLs and paths that a probe puts in its detail anyway are masked."""
    from omnirag.core.health import Check

    readiness = client.app.state.readiness

    async def llm():
        return Check(True, "ok", "smollm at http://llm.internal:6006/v1 (200)")

    async def careless():  # an old-style probe that puts everything in its detail
        return False, "index root /data/index/secret does not exist; see http://10.0.0.7:8002/readyz"

    async def broken():
        raise OSError("[Errno 2] No such file or directory: '/models/private/config.json'")

    readiness.add_probe("llm", llm)
    readiness.add_probe("index", careless)
    readiness.add_probe("model", broken)
    r = await client.get("/readyz")
    assert r.status_code == 503
    text = r.text
    for leak in ("http", "/data/index", "/models", "10.0.0.7", "llm.internal", "Error", "Errno"):
        assert leak not in text, (leak, text)
    checks = r.json()["checks"]
    assert checks["llm"] == {"ok": True, "detail": "ok"}
    assert checks["index"]["detail"] == "index root <path> does not exist; see <url>"
    assert checks["model"] == {"ok": False, "detail": "check failed"}
    _, private = await readiness.report(private=True)
    assert private["checks"]["llm"]["info"] == "smollm at http://llm.internal:6006/v1 (200)"
    assert "/data/index/secret" in private["checks"]["index"]["info"]
    assert "/models/private/config.json" in private["checks"]["model"]["info"]
    # Operators find the details in the log, once per change (not at every probe).
    assert {getattr(rec, "check", None) for rec in health_log} >= {"index", "model"}
    assert any("/models/private/config.json" in str(getattr(rec, "info", "")) for rec in health_log)
    health_log.clear()
    await client.get("/readyz")
    assert not health_log


TOKEN = "s3rvice-token-0123456789abcdef"


def token_app(token: str | None, *, require: bool = True) -> FastAPI:
    settings = ServiceSettings(service_token=token, max_body_bytes=2048)
    app = create_service_app("shell", settings, require_service_token=require)

    @app.post("/v1/work")
    async def work(body: dict) -> dict:
        return {"done": body}

    return app


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Basic {TOKEN}"},  # the right secret under another scheme
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
        {"X-Service-Token": TOKEN},
    ],
)
async def test_a_service_token_is_required_on_every_route_but_health_and_metrics(headers):
    app = token_app(TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/work", json={"a": 1}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_service_token"
        assert r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text
        assert (await c.get("/v1/nowhere", headers=headers)).status_code == 401  # no route probing
        for path in ("/healthz", "/metrics"):
            assert (await c.get(path, headers=headers)).status_code == 200, path
        assert (await c.get("/readyz", headers=headers)).status_code == 503  # open: not ready, not 401
        metrics = (await c.get("/metrics")).text
        assert 'status="401"' in metrics  # refusals are counted like any answer


async def test_the_right_service_token_passes_and_no_token_means_no_check():
    app = token_app(TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for auth in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
            r = await c.post("/v1/work", json={"a": 1}, headers={"Authorization": auth})
            assert r.status_code == 200 and r.json() == {"done": {"a": 1}}
    # No token set, or a service that does not ask for the check (the gateway, the UI): open.
    for app in (token_app(None), token_app(TOKEN, require=False)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.post("/v1/work", json={"a": 1})).status_code == 200
