"""Malformed and hostile bodies against the real services: a 4xx with a stable code, never a 500.

- A JSON body nested 100,000 deep (the gateway's chat route reads its body itself, with orjson and
  then the stdlib parser; the retriever parses through core's OrjsonRoute; the gateway's feedback
  route through FastAPI's own parser): 400 ``too_deeply_nested``.
- A body over the service's limit sent chunked (no Content-Length, so the limit trips while the
  body is being read): 413 ``payload_too_large`` from the retriever and the embedder.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from omnirag.core.settings import ServiceSettings
from tests.api.conftest import DEV_KEY

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
JSON = {"content-type": "application/json"}
DEEP = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def post(url: str, content: bytes | Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=content, headers={**JSON, **headers}, timeout=120)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback", "/v1/embeddings"])
def test_gateway_refuses_a_body_nested_100000_deep(gateway_url, path):
    r = post(gateway_url + path, DEEP, AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "too_deeply_nested"
    assert httpx.get(gateway_url + "/healthz").status_code == 200


@pytest.mark.parametrize(
    ("service", "path"),
    [("retriever", "/v1/collections/docs/search"), ("embedder", "/v1/embed"), ("embedder", "/v1/embeddings")],
)
def test_services_refuse_a_body_nested_100000_deep(request, service, path):
    base = request.getfixturevalue(f"{service}_url")
    r = post(base + path, DEEP, {})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "too_deeply_nested"


@pytest.mark.parametrize(
    ("service", "path"),
    [("retriever", "/v1/collections/docs/search"), ("embedder", "/v1/embed"), ("embedder", "/v1/embeddings")],
)
def test_an_oversized_chunked_body_is_413(request, service, path):
    base = request.getfixturevalue(f"{service}_url")
    limit = ServiceSettings().max_body_bytes  # neither fixture changes it
    chunk = b" " * (256 * 1024)

    def body() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(limit // len(chunk) + 1):
            yield chunk
        yield b'"}'

    r = post(base + path, body(), {})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
