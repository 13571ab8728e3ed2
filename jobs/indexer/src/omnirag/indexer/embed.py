"""Embedding chunks through the embedder service: batches, bounded concurrency, retries, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from omnirag.core.http import ServiceClient


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
        self.client = ServiceClient(
            base_url, name="embedder", timeout=timeout, retries=4, backoff=0.5, headers=headers
        )
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.info: dict[str, Any] = {}

    async def __aenter__(self) -> EmbedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def fetch_info(self) -> dict[str, Any]:
        self.info = await self.client.get_json("/v1/info")
        return self.info

    async def embed(self, texts: list[str], on_done: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors (L2-normalized float32) for ``texts``, in order."""
        if not texts:
            return np.zeros((0, int(self.info.get("dimension", 0))), dtype=np.float32)
        if not self.info:
            await self.fetch_info()
        body_extra: dict[str, Any] = {"normalize": True}
        # Models with a document prompt (e5, bge, …) want it on passages; the embedder knows its prompts.
        if "document" in (self.info.get("prompts") or {}):
            body_extra["prompt_name"] = "document"
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        out: list[np.ndarray | None] = [None] * len(batches)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int, batch: list[str]) -> None:
            async with gate:
                result = await self.client.post_json("/v1/embed", {"inputs": batch, **body_extra})
            out[i] = np.asarray(result["embeddings"], dtype=np.float32)
            if on_done:
                on_done(len(batch))

        await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))
        return np.concatenate([o for o in out if o is not None])
