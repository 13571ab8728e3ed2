"""Embedding chunks through the embedder service: batches, bounded concurrency, retries, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from omnirag.core.clients.embedder import EmbedderClient, prompt_for
from omnirag.core.errors import Overloaded
from omnirag.core.schemas.embeddings import EmbedderInfo


class EmbedClient:
    def __init__(
        self,
        base_url: str,
        *,
        batch_size: int = 64,
        concurrency: int = 2,
        timeout: float = 300.0,
        headers: dict[str, str] | None = None,
        overload_wait: float | None = None,
        retries: int = 4,
    ) -> None:
        # headers: the service token (ServiceSettings.service_headers), which the embedder may require.
        # More retries, spaced wider, than a query's: a run of hours should outlast an embedder restart.
        self.client = EmbedderClient(base_url, timeout=timeout, retries=retries, backoff=0.5, headers=headers)
        self.batch_size = batch_size
        self.concurrency = concurrency
        # A busy embedder (429: its queue is full, or would make the batch wait too long) is
        # backpressure, not failure: a batch keeps waiting out its Retry-After for this long (default:
        # the request timeout) before the run gives up. The client's own few retries span seconds; a
        # shared embedder under a burst of uploads, or on a loaded machine, can be busy for longer.
        self.overload_wait = timeout if overload_wait is None else overload_wait
        self.info: EmbedderInfo | None = None

    async def __aenter__(self) -> EmbedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def fetch_info(self) -> dict[str, Any]:
        """What the embedder serves (model, dimension, languages, prompts), as a dict."""
        self.info = await self.client.info()
        return self.info.model_dump()

    async def embed(self, texts: list[str], on_done: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors (L2-normalized float32) for ``texts``, in order."""
        if not texts:
            return np.zeros((0, self.info.dimension if self.info else 0), dtype=np.float32)
        if self.info is None:
            await self.fetch_info()
        assert self.info is not None
        # Passages get the model's document prompt where it has one (the query side uses "query").
        prompt_name = prompt_for(self.info, "document")
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        out: list[np.ndarray | None] = [None] * len(batches)
        gate = asyncio.Semaphore(self.concurrency)

        loop = asyncio.get_running_loop()

        async def one(i: int, batch: list[str]) -> None:
            deadline = loop.time() + self.overload_wait
            while True:
                try:
                    async with gate:
                        result = await self.client.embed(batch, normalize=True, prompt_name=prompt_name)
                    break
                except Overloaded as exc:
                    if loop.time() + exc.retry_after > deadline:
                        raise
                    await asyncio.sleep(exc.retry_after)
            out[i] = np.asarray(result.embeddings, dtype=np.float32)
            if on_done:
                on_done(len(batch))

        await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))
        return np.concatenate([o for o in out if o is not None])
