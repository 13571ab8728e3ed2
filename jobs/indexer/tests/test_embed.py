"""The indexer's batching around the shared embedder client, against the real embedder."""

from __future__ import annotations

import numpy as np

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
