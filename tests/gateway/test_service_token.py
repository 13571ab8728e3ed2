"""The shared service token, over real services: an embedder and a retriever that require it, the
retriever and the indexer's client calling the embedder with it, and a gateway (with the local
llama.cpp LLM) whose chat works through both while a caller without the token is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from omnirag_harness.gateway_stack import DEV_KEY
from omnirag_harness.servers import serve_in_thread

from omnirag.core.errors import UpstreamError

TOKEN = "shared-service-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer another-token-0123456789abcdef"}


@pytest.fixture(scope="module")
def guarded(index_root: Path) -> Iterator[dict[str, str]]:
    """An embedder and a retriever (over the example index) that both require TOKEN."""
    from omnirag.embedder.app import create_app as create_embedder
    from omnirag.embedder.config import EmbedderSettings
    from omnirag.retriever.app import create_app as create_retriever
    from omnirag.retriever.config import RetrieverSettings

    embedder_settings = EmbedderSettings(service_token=TOKEN, log_json=False)
    with serve_in_thread(create_embedder(embedder_settings)) as embedder:
        retriever_settings = RetrieverSettings(
            index_root=index_root, embedder_url=embedder, service_token=TOKEN, log_json=False
        )
        with serve_in_thread(create_retriever(retriever_settings)) as retriever:
            yield {"embedder": embedder, "retriever": retriever}


def model_name(guarded: dict[str, str]) -> str:
    return str(httpx.get(guarded["embedder"] + "/v1/info", headers=BEARER).json()["model"])


def test_embedder_refuses_calls_without_the_token_but_keeps_health_open(guarded: dict[str, str]) -> None:
    base = guarded["embedder"]
    model = model_name(guarded)
    calls = [
        ("POST", "/v1/embed", {"inputs": ["hello"]}),
        ("POST", "/v1/embeddings", {"input": "hello", "model": model}),
        ("GET", "/v1/info", None),
        ("GET", "/v1/models", None),
    ]
    for method, path, body in calls:
        for headers in ({}, WRONG):
            r = httpx.request(method, base + path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "invalid_service_token"
        assert httpx.request(method, base + path, json=body, headers=BEARER).status_code == 200, path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(base + path).status_code == 200, path
    # The token is the OpenAI SDK's api_key: the embedder's OpenAI API works unchanged with it.
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=TOKEN, max_retries=0)
    assert len(sdk.embeddings.create(input="hello", model=model).data[0].embedding) == 384


def test_retriever_refuses_calls_without_the_token_and_sends_it_to_the_embedder(
    guarded: dict[str, str],
) -> None:
    base = guarded["retriever"]
    search = {"query": "Which port does the gateway listen on?", "k": 3, "mode": "hybrid"}
    for headers in ({}, WRONG):
        assert httpx.get(base + "/v1/collections", headers=headers).status_code == 401
        r = httpx.post(base + "/v1/collections/docs/search", json=search, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_service_token"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(base + path).status_code == 200, path
    r = httpx.post(base + "/v1/collections/docs/search", json=search, headers=BEARER)
    assert r.status_code == 200
    # Hybrid, not degraded to sparse: the retriever's own calls to the embedder carry the token.
    assert r.json()["mode"] == "hybrid" and not r.json().get("degraded")
    assert r.json()["hits"]


def test_the_indexer_client_sends_the_token(guarded: dict[str, str]) -> None:
    from omnirag.indexer.embed import EmbedClient

    async def embed(headers: dict[str, str] | None) -> Any:
        async with EmbedClient(guarded["embedder"], headers=headers) as client:
            return await client.embed(["a chunk of a document"])

    assert asyncio.run(embed(BEARER)).shape == (1, 384)
    with pytest.raises(UpstreamError, match="401"):
        asyncio.run(embed(None))


def test_the_gateway_chats_through_guarded_services_with_the_token(
    gateway_factory: Any, guarded: dict[str, str]
) -> None:
    urls = {"embedder_url": guarded["embedder"], "retriever_url": guarded["retriever"]}
    model = model_name(guarded)
    with gateway_factory(service_token=TOKEN, **urls) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=DEV_KEY, max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="omnirag",
            messages=[{"role": "user", "content": "Which port does the gateway listen on?"}],
            max_tokens=16,
        )
        meta = (r.model_extra or {})["omnirag"]
        assert meta["degraded"] == [] and meta["citations"], meta
        assert len(client.embeddings.create(input="hello", model=model).data[0].embedding) == 384
        names = [c.id for c in client.models.list().data]
        assert len(names) == 2, names  # the chat model and the embedder's (its /v1/info needs the token)
        auth = {"Authorization": f"Bearer {DEV_KEY}"}
        listed = httpx.get(base + "/v1/collections", headers=auth)
        assert listed.status_code == 200 and "docs" in {c["name"] for c in listed.json()["data"]}
        checks = httpx.get(base + "/readyz").json()["checks"]
        assert checks["retriever"]["detail"] == "ok" and checks["embedder"]["detail"] == "ok"
    # Without the token the same gateway cannot reach them: it degrades instead of answering from them.
    with gateway_factory(**urls) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=DEV_KEY, max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="omnirag",
            messages=[{"role": "user", "content": "Which port does the gateway listen on?"}],
            max_tokens=8,
        )
        assert (r.model_extra or {})["omnirag"]["degraded"] == ["retriever"]
        with pytest.raises(openai.APIStatusError) as err:
            client.embeddings.create(input="hello", model=model)
        assert err.value.status_code == 502
        assert err.value.body["code"] == "embedder_unavailable"  # type: ignore[index]
