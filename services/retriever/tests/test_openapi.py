"""The retriever's OpenAPI document lists each route's errors, from the shared error table."""

from __future__ import annotations

import httpx

ERROR = {"$ref": "#/components/schemas/Error"}


def test_every_route_declares_its_errors_with_the_error_body(retriever: str) -> None:
    paths = httpx.get(retriever + "/openapi.json", timeout=30).json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert responses["500"]["content"]["application/json"]["schema"] == ERROR, (method, path)
    search = paths["/v1/collections/{name}/search"]["post"]["responses"]
    # Its body (400, 413, 422), no such collection (404), one that cannot be served (409), a dense
    # search while the embedder is down (503).
    assert {"400", "404", "409", "413", "422", "500", "503"} <= set(search)
    for status in ("404", "409", "503"):
        assert search[status]["content"]["application/json"]["schema"] == ERROR
    for path in ("/v1/collections/{name}", "/v1/collections/{name}/documents/{doc_id}"):
        assert {"404", "422", "500"} <= set(paths[path]["get"]["responses"]), path
    assert "404" not in paths["/v1/collections"]["get"]["responses"]


def test_a_documented_error_is_sent_as_documented(retriever: str) -> None:
    r = httpx.post(retriever + "/v1/collections/nope/search", json={"query": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
