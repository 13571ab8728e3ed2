"""The embedder's OpenAPI document lists each route's errors, from the shared error table."""

from __future__ import annotations

import httpx

ERROR = {"$ref": "#/components/schemas/Error"}


def test_every_route_declares_its_errors_with_the_error_body(base_url) -> None:
    paths = httpx.get(base_url + "/openapi.json", timeout=30).json()["paths"]
    for path in ("/v1/embeddings", "/v1/embed"):
        responses = paths[path]["post"]["responses"]
        # The body (400, 413, 422), the queue (429 with Retry-After), the model loading (503), a bug.
        assert {"400", "413", "422", "429", "500", "503"} <= set(responses), path
        assert "Retry-After" in responses["429"]["headers"]
        for status, response in responses.items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == ERROR, (path, status)
    # Only the OpenAI route names a model, which may not be served here.
    assert "404" in paths["/v1/embeddings"]["post"]["responses"]
    assert "404" not in paths["/v1/embed"]["post"]["responses"]
    for path in ("/v1/models", "/v1/info"):
        assert {"500", "503"} <= set(paths[path]["get"]["responses"]), path
        assert "429" not in paths[path]["get"]["responses"]  # no queue behind them


def test_the_documented_errors_are_the_ones_sent(base_url) -> None:
    r = httpx.post(base_url + "/v1/embeddings", json={"input": "x", "model": "nope"}, timeout=30)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    json = {"content-type": "application/json"}
    r = httpx.post(base_url + "/v1/embed", content=b"{not json", headers=json, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    deep = b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    r = httpx.post(base_url + "/v1/embed", content=deep, headers=json, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_deeply_nested"
