"""The indexer's batching around the shared embedder client, against the real embedder."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from omnirag.indexer.embed import EmbedClient


async def test_batches_keep_the_order_and_report_progress(embedder_url: str) -> None:
    texts = [f"Chunk {i} of a document about {'ports' if i % 3 else 'history'}." for i in range(11)]
    done: list[int] = []
    async with EmbedClient(embedder_url, batch_size=4, concurrency=2) as client:
        assert (await client.embed([])).shape == (0, 0)  # nothing asked: no call, not even /v1/info
        vectors = await client.embed(texts, on_done=done.append)
        info = await client.fetch_info()
        one_by_one = np.concatenate([await client.embed([t]) for t in texts])
    assert vectors.shape == (11, info["dimension"]) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # In batches of four, two at a time: each text still gets its own vector, in its place.
    assert np.allclose(vectors, one_by_one, atol=1e-5)
    assert sorted(done) == [3, 4, 4]
    assert {"model", "dimension", "languages", "prompts"} <= set(info)


async def test_a_busy_embedder_is_waited_out_not_failed() -> None:
    """The real embedder with a queue of 8 texts, asked for 96 in batches of 8, eight at a time: it
    answers most of them 429 at first. The run waits out each Retry-After and gets every vector,
    in order; with no patience at all the same run fails. (The client's own quick retries are off
    here, so that every 429 reaches the run's patience.)"""
    from omnirag_harness.servers import metric_value, serve_in_thread

    from omnirag.core.errors import Overloaded
    from omnirag.embedder.app import create_app
    from omnirag.embedder.config import EmbedderSettings

    texts = [f"Passage {i}: the gateway, the embedder and the retriever talk over HTTP." for i in range(96)]
    settings = EmbedderSettings(log_json=False, max_queue_inputs=8)
    with serve_in_thread(create_app(settings)) as url:
        async with EmbedClient(url, batch_size=8, concurrency=8, timeout=120, retries=0) as client:
            vectors = await client.embed(texts)
            one = await client.embed([texts[50]])
        async with EmbedClient(
            url, batch_size=8, concurrency=8, timeout=120, retries=0, overload_wait=0
        ) as impatient:
            with pytest.raises(Overloaded):
                await impatient.embed(texts)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{url}/metrics")).text
    assert vectors.shape[0] == 96 and np.allclose(vectors[50], one[0], atol=1e-5)
    refused = 'method="POST",route="/v1/embed",status="429"'
    assert metric_value(metrics, "omnirag_embedder_requests_total", refused) > 0
