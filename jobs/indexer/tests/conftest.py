"""Shared fixtures: a real embedder over HTTP, a real Redis, settings pointing at temporary roots."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator

import pytest
from omnirag_harness.servers import redis_server, serve_in_thread


@pytest.fixture(scope="session")
def embedder_url() -> Iterator[str]:
    from omnirag.embedder.app import create_app
    from omnirag.embedder.config import EmbedderSettings

    with serve_in_thread(create_app(EmbedderSettings(log_json=False))) as base:
        yield base


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture
def settings(tmp_path, embedder_url):
    from omnirag.indexer.config import IndexerSettings

    return IndexerSettings(
        index_root=tmp_path / "index",
        embedder_url=embedder_url,
        uploads_dir=tmp_path / "uploads",
        prune_grace_seconds=0,
        embed_batch_size=16,
    )
