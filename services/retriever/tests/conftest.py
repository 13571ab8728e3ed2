"""Fixtures: a real embedder and a real retriever over HTTP, and collections built from real vectors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from omnirag_harness.servers import serve_in_thread

from omnirag.embedder.app import create_app as create_embedder
from omnirag.embedder.config import EmbedderSettings
from omnirag.index import Document, EmbeddingInfo, IndexConfig, VersionWriter
from omnirag.retriever.app import create_app as create_retriever
from omnirag.retriever.config import RetrieverSettings

MODEL = "all-MiniLM-L6-v2"

DOCS = [
    (
        "gateway-port",
        "The gateway listens on port 8000 and speaks the OpenAI chat API.",
        "ops/gateway.md",
        "en",
    ),
    (
        "embedder-port",
        "The embedder serves SentenceTransformer vectors on port 8001.",
        "ops/embedder.md",
        "en",
    ),
    (
        "redis-ttl",
        "Chat history lives in Redis and every session key expires after a TTL.",
        "ops/memory.md",
        "en",
    ),
    ("helm", "Operators install the platform on Kubernetes with the Helm chart.", "deploy/helm.md", "en"),
    (
        "faiss",
        "Dense vectors are searched with FAISS; words are searched with BM25.",
        "design/index.md",
        "en",
    ),
    ("vacation", "Employees get twenty-five days of paid vacation every year.", "hr/leave.md", "en"),
    ("zh-rag", "检索增强生成先从知识库中检索相关文档，再让大模型根据文档回答问题。", "zh/rag.md", "zh"),
    ("zh-redis", "对话历史短期保存在内存中，长期保存在 Redis 数据库里。", "zh/memory.md", "zh"),
]


@pytest.fixture(scope="session")
def embedder_url() -> Iterator[str]:
    with serve_in_thread(create_embedder(EmbedderSettings(log_json=False))) as base:
        yield base


def embed(embedder_url: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(embedder_url + "/v1/embed", json={"inputs": texts, "normalize": True}, timeout=120)
    r.raise_for_status()
    return np.array(r.json()["embeddings"], dtype=np.float32)


@pytest.fixture(scope="session")
def embed_texts(embedder_url) -> Callable[[list[str]], np.ndarray]:
    return lambda texts: embed(embedder_url, texts)


Builder = Callable[..., str]


@pytest.fixture(scope="session")
def build(embedder_url) -> Builder:
    """Publish a new version of a collection: build(root, name, docs=[(id, text, source, lang)], ...)."""

    def _build(
        root: Path,
        name: str,
        docs: list[tuple[str, str, str, str]] = DOCS,
        *,
        model: str = MODEL,
        dimension: int = 384,
        index: str = "flat",
        deletes: list[str] = (),
        base: Any = "current",
    ) -> str:
        vectors = embed(embedder_url, [d[1] for d in docs]) if docs else np.zeros((0, dimension))
        if dimension != vectors.shape[1] and docs:
            vectors = np.resize(vectors, (len(docs), dimension)).astype(np.float32)
        info = EmbeddingInfo(model=model, dimension=dimension, languages=["en"])
        with VersionWriter(root, name, info, IndexConfig(type=index), base=base) as w:
            w.upsert(
                [
                    Document(
                        id=i,
                        text=t,
                        metadata={"source": s, "lang": lang, "kb": name},
                        vector=v,
                        content_hash=str(hash(t)),
                    )
                    for (i, t, s, lang), v in zip(docs, vectors, strict=True)
                ]
            )
            if deletes:
                w.delete(list(deletes))
            return w.commit()

    return _build


@pytest.fixture
def index_root(tmp_path) -> Path:
    root = tmp_path / "index"
    root.mkdir()
    return root


@pytest.fixture
def retriever(index_root, embedder_url, build) -> Iterator[str]:
    build(index_root, "docs")
    settings = RetrieverSettings(
        index_root=index_root, embedder_url=embedder_url, poll_seconds=0.2, log_json=False
    )
    with serve_in_thread(create_retriever(settings)) as base:
        yield base
