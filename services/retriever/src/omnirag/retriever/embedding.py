"""Query vectors from the embedder service, and what the embedder says it is."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from omnirag.core.clients.embedder import EmbedderClient, prompt_for
from omnirag.core.schemas.embeddings import EmbedderInfo

log = logging.getLogger("omnirag.retriever.embedding")


class QueryEmbedder:
    def __init__(self, base_url: str, timeout: float, *, headers: dict[str, str] | None = None) -> None:
        # headers: the service token (ServiceSettings.service_headers), which the embedder may require.
        self.client = EmbedderClient(base_url, timeout=timeout, retries=2, backoff=0.1, headers=headers)
        # What the embedder serves, kept: collections are judged against it, and a query's prompt
        # depends on it. The readiness probe refreshes it (the embedder may change model).
        self.info: EmbedderInfo | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch_info(self) -> EmbedderInfo:
        async with self._lock:
            self.info = await self.client.info(retry=False)
            return self.info

    async def embed(self, text: str, normalize: bool) -> np.ndarray:
        info = self.info or await self.fetch_info()
        out = await self.client.embed([text], normalize=normalize, prompt_name=prompt_for(info, "query"))
        assert out.embeddings is not None  # the client checks there is one vector per input
        return np.asarray(out.embeddings[0], dtype=np.float32)
