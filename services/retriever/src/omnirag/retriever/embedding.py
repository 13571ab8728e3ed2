"""Query vectors from the embedder service, and what the embedder says it is."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from omnirag.core.http import ServiceClient

log = logging.getLogger("omnirag.retriever.embedding")


class QueryEmbedder:
    def __init__(self, base_url: str, timeout: float, *, headers: dict[str, str] | None = None) -> None:
        # headers: the service token (ServiceSettings.service_headers), which the embedder may require.
        self.client = ServiceClient(
            base_url, name="embedder", timeout=timeout, retries=2, backoff=0.1, headers=headers
        )
        self.info: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch_info(self) -> dict[str, Any]:
        async with self._lock:
            self.info = await self.client.get_json("/v1/info", retry=False)
            return self.info

    async def embed(self, text: str, normalize: bool) -> np.ndarray:
        if self.info is None:
            await self.fetch_info()
        assert self.info is not None
        body: dict[str, Any] = {"inputs": [text], "normalize": normalize}
        # Models trained with a query prompt (e5, bge, …) need it; the embedder knows its prompts.
        if "query" in (self.info.get("prompts") or {}):
            body["prompt_name"] = "query"
        out = await self.client.post_json("/v1/embed", body)
        return np.asarray(out["embeddings"][0], dtype=np.float32)
