"""Search over HTTP: every mode, filters, errors, and the collection listing."""

from __future__ import annotations

import httpx
import pytest


def search(base: str, name: str = "docs", **body):
    return httpx.post(f"{base}/v1/collections/{name}/search", json=body, timeout=30)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_finds_the_answer(retriever, mode):
    r = search(retriever, query="Which port does the gateway listen on?", k=3, mode=mode)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == mode and body["degraded"] == []
    assert body["hits"][0]["id"] == "gateway-port"
    hit = body["hits"][0]
    assert hit["metadata"]["source"] == "ops/gateway.md" and "8000" in hit["text"]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_chinese_query_is_answered_by_bm25_in_hybrid(retriever):
    r = search(retriever, query="对话历史保存在哪里？", k=3)
    hits = r.json()["hits"]
    assert hits[0]["id"] == "zh-redis"
    sparse = search(retriever, query="对话历史保存在哪里？", k=3, mode="sparse").json()["hits"]
    assert [h["id"] for h in hits[: len(sparse)]] == [h["id"] for h in sparse]


def test_filters_equality_in_and_ne(retriever):
    q = "where is the chat history kept?"
    only = search(retriever, query=q, k=5, filter={"source": "ops/gateway.md"}).json()["hits"]
    assert [h["id"] for h in only] == ["gateway-port"]
    within = search(retriever, query=q, k=5, filter={"lang": {"$in": ["zh"]}}).json()["hits"]
    assert {h["id"] for h in within} == {"zh-rag", "zh-redis"}
    without = search(retriever, query=q, k=10, filter={"lang": {"$ne": "zh"}}).json()["hits"]
    assert without and all(h["metadata"]["lang"] == "en" for h in without)
    none = search(retriever, query=q, k=5, filter={"source": "no/such.md"}).json()["hits"]
    assert none == []


def test_vector_search_and_score_threshold(retriever, embed_texts):
    vec = embed_texts(["How many vacation days do employees get?"])[0].tolist()
    hits = search(retriever, vector=vec, k=3, mode="dense").json()["hits"]
    assert hits[0]["id"] == "vacation"
    # With a vector and no text, hybrid is dense.
    assert search(retriever, vector=vec, k=3).json()["mode"] == "dense"
    best = hits[0]["score"]
    kept = search(retriever, vector=vec, k=8, mode="dense", score_threshold=best - 1e-4).json()["hits"]
    assert [h["id"] for h in kept] == ["vacation"]


def test_errors_are_clear(retriever):
    r = search(retriever, name="nope", query="x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    r = search(retriever, query="x", k=1000)
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]
    r = search(retriever, query="x", filter={"source": {"$regex": ".*"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_filter"
    r = search(retriever, query="x", filter={"bad field!": 1})
    assert r.status_code == 422
    r = search(retriever, k=3)
    assert r.status_code == 422 and "query" in r.json()["error"]["message"]
    r = search(retriever, vector=[0.1, 0.2, 0.3], mode="dense")
    assert r.status_code == 422 and "384" in r.json()["error"]["message"]
    r = search(retriever, query="x", mode="fuzzy")
    assert r.status_code == 422


def test_collections_are_listed_and_described(retriever):
    listed = httpx.get(retriever + "/v1/collections").json()["collections"]
    assert [c["name"] for c in listed] == ["docs"]
    assert listed[0]["documents"] == 8 and listed[0]["status"] == "ready"
    assert listed[0]["embedding_model"] == "all-MiniLM-L6-v2" and listed[0]["index_type"] == "flat"
    detail = httpx.get(retriever + "/v1/collections/docs").json()
    assert detail["manifest"]["counts"]["documents"] == 8
    assert detail["version"] == detail["manifest"]["version"]
    assert httpx.get(retriever + "/v1/collections/nope").status_code == 404


def test_readyz_and_metrics(retriever):
    r = httpx.get(retriever + "/readyz")
    assert r.status_code == 200, r.text
    search(retriever, query="helm chart", k=2, mode="sparse")
    search(retriever, query="zzzzqqq", k=2, mode="sparse")
    text = httpx.get(retriever + "/metrics").text
    assert 'omnirag_retriever_search_seconds_count{mode="sparse"}' in text
    assert 'omnirag_retriever_empty_results_total{collection="docs"} 1.0' in text
    assert 'omnirag_retriever_collection_documents{collection="docs"} 8.0' in text
    assert "omnirag_retriever_collection_version{" in text
    assert "omnirag_retriever_hits_returned_bucket" in text
