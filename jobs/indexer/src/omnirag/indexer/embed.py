"""Embedding chunks through the embedder service: batches, bounded concurrency, retries, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from omnirag.core.clients.embedder import EmbedderClient, prompt_for
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
    ) -> None:
        # headers: the service token (ServiceSettings.service_headers), which the embedder may require.
        # More retries, spaced wider, than a query's: a run of hours should outlast an embedder restart.
        self.client = EmbedderClient(base_url, timeout=timeout, retries=4, backoff=0.5, headers=headers)
        self.batch_size = batch_size
        self.concurrency = concurrency
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

        async def one(i: int, batch: list[str]) -> None:
            async with gate:
                result = await self.client.embed(batch, normalize=True, prompt_name=prompt_name)
            out[i] = np.asarray(result.embeddings, dtype=np.float32)
            if on_done:
                on_done(len(batch))

        await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))
        return np.concatenate([o for o in out if o is not None])
