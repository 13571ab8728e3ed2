"""The shared embedder client (omnirag.core.clients.embedder) against the real embedder and model."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from omnirag_harness.servers import serve_in_thread

from omnirag.core.clients.embedder import EmbedderClient, prompt_for
from omnirag.core.errors import InvalidInput, NotFound, Overloaded, UpstreamError
from omnirag.core.schemas.embeddings import EmbedderInfo
from omnirag.embedder.app import create_app
from omnirag.embedder.config import EmbedderSettings

TEXTS = ["The gateway listens on port 8000.", "Redis keeps the chat history.", "FAISS searches vectors."]


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


async def test_info_and_vectors_are_the_models(base_url, st_model, model_name) -> None:
    async with EmbedderClient(base_url) as client:
        info = await client.info()
        assert isinstance(info, EmbedderInfo)
        assert (info.model, info.dimension) == (model_name, st_model.get_embedding_dimension())
        # The model card names both prompts (empty for MiniLM); a prompt the model lacks is not asked for.
        assert set(info.prompts) == {"query", "document"}
        assert prompt_for(info, "query") == "query" and prompt_for(info, "document") == "document"
        assert prompt_for(info.model_copy(update={"prompts": {}}), "query") is None

        out = await client.embed(TEXTS, normalize=True)
        got = np.asarray(out.embeddings, dtype=np.float32)
        assert got.shape == (3, info.dimension) and out.normalized
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert cosines(got, st_model.encode(TEXTS)).min() > 0.9999
        assert out.usage.prompt_tokens > 0

        short = await client.embed(TEXTS[:1], truncate_dim=64, precision="int8")
        assert short.precision == "int8" and short.dimension == 64
        assert short.embeddings is not None and len(short.embeddings[0]) == 64

        # The OpenAI surface: the same vectors, in the order asked, whatever order they come in.
        openai_style = await client.embeddings(TEXTS)
        assert [d.index for d in openai_style.data] == [0, 1, 2]
        assert openai_style.model == model_name
        vectors = np.asarray([d.embedding for d in openai_style.data], dtype=np.float32)
        assert cosines(vectors, got).min() > 0.9999


async def test_a_borrowed_client_is_used_and_left_open(base_url) -> None:
    async with httpx.AsyncClient() as http:
        client = EmbedderClient(base_url, async_client=http)
        assert (await client.info()).dimension == 384
        assert len((await client.embed(["one text"])).embeddings or []) == 1
        await client.aclose()
        assert not http.is_closed  # its owner closes it
        assert (await client.info()).dimension == 384


@pytest.mark.parametrize("borrowed", [False, True])
async def test_failures_are_the_shared_errors(base_url, borrowed: bool) -> None:
    async with httpx.AsyncClient() as http:
        client = EmbedderClient(base_url, retries=0, async_client=http if borrowed else None)
        with pytest.raises(NotFound, match="is not served here"):
            await client.embeddings(["a text"], model="no-such-model")
        # A request the schema refuses is never sent.
        with pytest.raises(InvalidInput, match="empty"):
            await client.embed(["   "])
        with pytest.raises(InvalidInput):
            await client.embed(["a text"], prompt="p", prompt_name="query")
        # The embedder refuses it (it checks against the model): its reason comes back.
        with pytest.raises(UpstreamError, match="exceeds the model's dimension"):
            await client.embed(["a text"], truncate_dim=4096)
        await client.aclose()

        down = EmbedderClient(
            "http://127.0.0.1:9", retries=0, timeout=2, async_client=http if borrowed else None
        )
        with pytest.raises(UpstreamError, match="ConnectError") as caught:
            await down.info()
        if borrowed:
            # The transport's error stays reachable: the gateway answers an open circuit with 503 from it.
            assert isinstance(caught.value.__cause__, httpx.ConnectError)
        await down.aclose()


def test_the_service_token_is_sent() -> None:
    settings = EmbedderSettings(log_json=False, service_token="s3cret-token-for-the-client-test")
    with serve_in_thread(create_app(settings)) as base:

        async def info(headers: dict[str, str] | None) -> EmbedderInfo:
            async with EmbedderClient(base, retries=0, headers=headers) as client:
                return await client.info()

        assert asyncio.run(info(settings.service_headers())).dimension == 384
        with pytest.raises(UpstreamError, match="401"):
            asyncio.run(info(None))


async def test_an_answer_that_is_not_the_schema_is_an_upstream_error() -> None:
    # A failure injected: a server that answers 200 with another shape.
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"model": "m"}))
    async with httpx.AsyncClient(transport=transport) as http:
        client = EmbedderClient("http://embedder.invalid", async_client=http)
        with pytest.raises(UpstreamError, match="does not fit EmbedderInfo"):
            await client.info()


async def test_overload_is_overloaded_with_the_embedders_retry_after(gated_service) -> None:
    with gated_service(max_queue_inputs=2, max_wait_ms=0, max_queue_wait_seconds=600) as (
        base,
        _app,
        gate,
        passes,
    ):
        async with EmbedderClient(base, retries=0, timeout=60) as client:
            first = asyncio.ensure_future(client.embed(["held at the gate"]))
            while not passes:
                await asyncio.sleep(0.01)
            queued = asyncio.ensure_future(client.embed(["queued one", "queued two"]))
            await asyncio.sleep(0.2)
            with pytest.raises(Overloaded) as caught:
                await client.embed(["one too many"])
            assert caught.value.retry_after >= 1
            gate.set()
            assert len((await first).embeddings or []) == 1
            assert len((await queued).embeddings or []) == 2
