"""LangChain code uses a remote collection through as_retriever(): same documents as HTTP search."""

from __future__ import annotations

import httpx

from omnirag.core.clients.retriever import OmniragRetriever, OmniragVectorStore

QUESTION = "How is chat history stored?"


def http_ids(base: str, **body) -> list[str]:
    r = httpx.post(f"{base}/v1/collections/docs/search", json={"query": QUESTION, **body})
    return [h["id"] for h in r.json()["hits"]]


def test_vectorstore_as_retriever_matches_http_search(retriever):
    store = OmniragVectorStore(base_url=retriever, collection="docs")
    docs = store.as_retriever(search_kwargs={"k": 3}).invoke(QUESTION)
    assert [d.id for d in docs] == http_ids(retriever, k=3)
    assert docs[0].metadata["source"] and docs[0].page_content
    scored = store.similarity_search_with_score(QUESTION, k=3, mode="sparse")
    assert [d.id for d, _ in scored] == http_ids(retriever, k=3, mode="sparse")
    filtered = store.similarity_search(QUESTION, k=5, filter={"lang": "zh"})
    assert {d.metadata["lang"] for d in filtered} == {"zh"}


async def test_retriever_sync_and_async_match_http_search(retriever):
    r = OmniragRetriever(base_url=retriever, collection="docs", k=2, filter={"lang": {"$ne": "zh"}})
    want = http_ids(retriever, k=2, filter={"lang": {"$ne": "zh"}})
    assert [d.id for d in r.invoke(QUESTION)] == want
    assert [d.id for d in await r.ainvoke(QUESTION)] == want


def test_the_store_is_read_only(retriever):
    import pytest

    store = OmniragVectorStore(base_url=retriever, collection="docs")
    with pytest.raises(NotImplementedError, match="read-only"):
        store.add_texts(["x"])
