"""A collection built with another embedding model is refused, loudly, not searched with wrong vectors."""

from __future__ import annotations

import httpx
from omnirag_harness.servers import serve_in_thread

from omnirag.retriever.app import create_app
from omnirag.retriever.config import RetrieverSettings


def test_mismatched_model_is_refused_with_a_clear_error(index_root, embedder_url, build):
    build(index_root, "docs")
    build(
        index_root,
        "legacy",
        [("a", "old text", "a.md", "en")],
        model="text-embedding-ada-002",
        dimension=1536,
    )
    settings = RetrieverSettings(index_root=index_root, embedder_url=embedder_url, log_json=False)
    with serve_in_thread(create_app(settings), ready_path=None) as base:
        r = httpx.post(f"{base}/v1/collections/legacy/search", json={"query": "old"})
        assert r.status_code == 409
        err = r.json()["error"]
        assert err["code"] == "collection_refused"
        assert "text-embedding-ada-002" in err["message"] and "all-MiniLM-L6-v2" in err["message"]
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert "legacy" in ready.json()["checks"]["index"]["detail"]
        listed = {c["name"]: c["status"] for c in httpx.get(f"{base}/v1/collections").json()["collections"]}
        assert listed == {"docs": "ready", "legacy": "refused"}
        # The good collection is still served.
        assert httpx.post(f"{base}/v1/collections/docs/search", json={"query": "helm"}).status_code == 200


def test_embedder_down_hybrid_degrades_to_sparse_and_dense_fails_clearly(index_root, build):
    build(index_root, "docs")
    settings = RetrieverSettings(
        index_root=index_root, embedder_url="http://127.0.0.1:9", log_json=False, embedder_timeout=1.0
    )
    with serve_in_thread(create_app(settings), ready_path=None) as base:
        r = httpx.post(
            f"{base}/v1/collections/docs/search", json={"query": "helm chart kubernetes"}, timeout=30
        )
        assert r.status_code == 200
        body = r.json()
        assert body["mode"] == "sparse" and body["degraded"] == ["embedder"]
        assert body["hits"][0]["id"] == "helm"
        d = httpx.post(
            f"{base}/v1/collections/docs/search", json={"query": "helm", "mode": "dense"}, timeout=30
        )
        assert d.status_code == 503 and d.json()["error"]["code"] == "embedder_unavailable"
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["checks"]["embedder"]["ok"] is False
