"""Search over HTTP: every mode, filters, errors, and the collection listing."""

from __future__ import annotations

import httpx
import pytest
from omnirag_harness.servers import metric_value, serve_in_thread

from omnirag.retriever.app import create_app as create_retriever
from omnirag.retriever.config import RetrieverSettings


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


# ---- hybrid without a useless embedding --------------------------------------------------------

ZH_DOCS = [
    (
        "zh-memory",
        "对话历史短期保存在内存中，长期保存在 Redis 数据库里，对话历史按会话查询。",
        "zh/memory.md",
        "zh",
    ),
    ("zh-ttl", "每个会话的对话历史都有过期时间。", "zh/ttl.md", "zh"),
    ("zh-index", "索引保存在共享的存储卷上，检索服务只读打开。", "zh/index.md", "zh"),
    ("zh-upload", "用户上传的文档一直保存，直到通过接口删除。", "zh/upload.md", "zh"),
    ("zh-rag", "检索增强生成先从知识库中检索相关文档，再让大模型根据文档回答问题。", "zh/rag.md", "zh"),
    ("zh-port", "网关监听 8000 端口。", "zh/port.md", "zh"),
    ("en-helm", "Operators install the platform on Kubernetes with the Helm chart.", "deploy/helm.md", "en"),
]
EMBED_REQUESTS = ("omnirag_embedder_requests_total", 'method="POST",route="/v1/embed",status="200"')


def embed_requests(embedder_url: str) -> float:
    """The real embedder's own count of the /v1/embed requests it has answered."""
    return metric_value(httpx.get(embedder_url + "/metrics").text, *EMBED_REQUESTS)


@pytest.fixture
def zh_retriever(index_root, embedder_url, build):
    build(index_root, "docs")
    build(index_root, "zh", ZH_DOCS)  # the manifest says the model covers ["en"], as MiniLM's card does
    settings = RetrieverSettings(index_root=index_root, embedder_url=embedder_url, log_json=False)
    with serve_in_thread(create_retriever(settings)) as base:
        yield base


def test_hybrid_does_not_embed_a_query_whose_dense_weight_is_zero(zh_retriever, embedder_url, embed_texts):
    """A Chinese query against an English-only model: the dense part would count 0, so the embedder
    is not called; the hits, their order and their fused scores are those of the full computation
    (the same request with the query's real vector)."""
    query = "对话历史保存在哪里？"
    sparse = search(zh_retriever, "zh", query=query, k=4, mode="sparse").json()["hits"]
    scores = [h["score"] for h in sparse]
    # the premise: BM25 alone finds more than k=3 documents, with no tie to break
    assert len(sparse) == 4 and len(set(scores)) == 4, sparse

    search(zh_retriever, "zh", query="warm-up: the embedder's /v1/info is read once", k=1)
    before = embed_requests(embedder_url)
    r = search(zh_retriever, "zh", query=query, k=3, mode="hybrid")
    assert r.status_code == 200, r.text
    assert embed_requests(embedder_url) == before
    body = r.json()
    assert body["mode"] == "hybrid" and body["degraded"] == []

    vector = embed_texts([query])[0].tolist()
    full = search(zh_retriever, "zh", query=query, vector=vector, k=3, mode="hybrid").json()
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in full["hits"]] == [h["id"] for h in sparse[:3]]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h["score"] for h in full["hits"]], rel=1e-6)
    assert [h["sparse_score"] for h in body["hits"]] == pytest.approx(
        [h["sparse_score"] for h in full["hits"]], rel=1e-6
    )
    # a threshold on the fused score keeps the same hits either way
    cut = full["hits"][1]["score"] - 1e-6
    kept = search(zh_retriever, "zh", query=query, k=3, score_threshold=cut).json()["hits"]
    assert [h["id"] for h in kept] == [h["id"] for h in full["hits"][:2]]
    assert embed_requests(embedder_url) == before + 1  # only the test's own embedding


def test_hybrid_still_embeds_when_the_dense_part_counts(zh_retriever, embedder_url):
    search(zh_retriever, query="warm-up", k=1)
    before = embed_requests(embedder_url)
    r = search(zh_retriever, query="Which port does the gateway listen on?", k=3, mode="hybrid")
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "gateway-port"
    assert r.json()["hits"][0]["dense_score"] is not None
    assert embed_requests(embedder_url) == before + 1


def test_hybrid_embeds_a_chinese_query_when_bm25_alone_cannot_fill_k(zh_retriever, embedder_url):
    """With fewer BM25 hits than k, hybrid fills the rest by the dense order: that needs the vector,
    so the embedder is called and the answer is the full one."""
    sparse = search(zh_retriever, "zh", query="网关端口", k=5, mode="sparse").json()["hits"]
    assert 0 < len(sparse) < 5
    search(zh_retriever, "zh", query="warm-up", k=1)
    before = embed_requests(embedder_url)
    hits = search(zh_retriever, "zh", query="网关端口", k=5, mode="hybrid").json()["hits"]
    assert len(hits) == 5 and hits[0]["id"] == sparse[0]["id"]
    assert embed_requests(embedder_url) == before + 1
