"""The one error table and the JSON error shape, through a real app."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from omnirag.core.app import create_service_app
from omnirag.core.errors import (
    ERROR_STATUS,
    ClientGone,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    NotReady,
    OmniragError,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UpstreamError,
    status_for,
)
from omnirag.core.settings import ServiceSettings


class Thing(BaseModel):
    n: int


def make_app() -> FastAPI:
    app = create_service_app("errtest", ServiceSettings())

    @app.get("/raise/{name}")
    async def raise_it(name: str) -> None:
        exc = {
            "invalid": InvalidInput("bad field"),
            "large": PayloadTooLarge("too big"),
            "missing": NotFound("no such thing", code="thing_not_found"),
            "overloaded": Overloaded("full", retry_after=7),
            "upstream": UpstreamError("retriever down"),
            "unready": NotReady("loading"),
            "bug": RuntimeError("secret stack detail"),
        }[name]
        raise exc

    @app.post("/things")
    async def things(body: Thing) -> Thing:
        return body

    return app


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def test_every_error_type_has_a_status():
    assert {
        status_for(e("x"))
        for e in (
            InvalidInput,
            PayloadTooLarge,
            NotFound,
            Unauthorized,
            Forbidden,
            Conflict,
            NotReady,
            UpstreamError,
            ClientGone,
        )
    } == {422, 413, 404, 401, 403, 409, 503, 502, 499}
    assert status_for(Overloaded("x")) == 429
    assert ERROR_STATUS[OmniragError] == 500

    class Sub(NotFound):
        pass

    assert status_for(Sub("x")) == 404  # subclasses inherit their parent's row


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("invalid", 422, "invalid_input"),
        ("large", 413, "payload_too_large"),
        ("missing", 404, "thing_not_found"),
        ("overloaded", 429, "overloaded"),
        ("upstream", 502, "upstream_error"),
        ("unready", 503, "not_ready"),
        ("bug", 500, "internal_error"),
    ],
)
async def test_errors_are_json_with_a_stable_code(client, name, status, code):
    r = await client.get(f"/raise/{name}")
    assert r.status_code == status
    body = r.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if name == "overloaded":
        assert r.headers["retry-after"] == "7"
    if name == "bug":
        assert "secret stack detail" not in r.text  # no internals leak to callers


async def test_validation_errors_name_the_field(client):
    r = await client.post("/things", json={"n": "not a number"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_input"
    assert "n:" in err["message"]


async def test_unknown_route_is_a_json_404(client):
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
