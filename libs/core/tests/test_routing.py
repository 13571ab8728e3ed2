"""OrjsonRoute: the same validation and error shapes as FastAPI's own parsing, with orjson."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from omnirag.core.app import create_service_app
from omnirag.core.routing import OrjsonRequest, OrjsonRoute
from omnirag.core.settings import ServiceSettings


class Body(BaseModel):
    vector: list[float] = Field(min_length=1)
    k: int = Field(4, ge=1, le=10)


def app() -> TestClient:
    router = APIRouter(route_class=OrjsonRoute)

    @router.post("/echo")
    async def echo(body: Body) -> dict:
        return {"n": len(body.vector), "k": body.k}

    a = create_service_app("routingtest", ServiceSettings())
    a.include_router(router)
    return TestClient(a)


def test_valid_bodies_parse_and_validate() -> None:
    c = app()
    r = c.post("/echo", json={"vector": [0.5] * 384, "k": 3})
    assert r.status_code == 200 and r.json() == {"n": 384, "k": 3}


def test_invalid_json_and_invalid_fields_are_422_in_the_house_shape() -> None:
    c = app()
    bad = c.post("/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    out = c.post("/echo", json={"vector": [], "k": 99})
    assert out.status_code == 422
    assert "vector" in out.json()["error"]["message"] and "k" in out.json()["error"]["message"]


def test_the_schema_still_documents_the_body() -> None:
    schema = app().get("/openapi.json").json()
    assert "requestBody" in schema["paths"]["/echo"]["post"]
    assert issubclass(OrjsonRequest, object)
