"""Fixtures: the whole stack for real — Redis, the embedder, the example knowledge base indexed by
the indexer, the retriever, the local llama.cpp LLM — and gateways served over HTTP in front of it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from omnirag.core.testing import redis_server, serve_in_thread
from omnirag.embedder.app import create_app as create_embedder
from omnirag.embedder.config import EmbedderSettings
from omnirag.gateway.config import GatewaySettings
from omnirag.indexer.testing import index_knowledge_bases
from omnirag.retriever.app import create_app as create_retriever
from omnirag.retriever.config import RetrieverSettings

REPO = Path(__file__).resolve().parents[3]
DEV_KEY = "test-dev-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture(scope="session")
def embedder_url() -> Iterator[str]:
    with serve_in_thread(create_embedder(EmbedderSettings(log_json=False))) as base:
        yield base


@pytest.fixture(scope="session")
def index_root(tmp_path_factory: pytest.TempPathFactory, embedder_url: str) -> Path:
    """The example knowledge base of ``make run`` (config/knowledge-bases.yaml → docs/), indexed."""
    root = tmp_path_factory.mktemp("index")
    return index_knowledge_bases(REPO / "config/knowledge-bases.yaml", root, embedder_url)


@pytest.fixture(scope="session")
def retriever_url(index_root: Path, embedder_url: str) -> Iterator[str]:
    app = create_retriever(
        RetrieverSettings(index_root=index_root, embedder_url=embedder_url, log_json=False)
    )
    with serve_in_thread(app) as base:
        yield base


@pytest.fixture(scope="session")
def llm_url() -> Iterator[str]:
    """The packaged SmolLM2 through llama.cpp; OMNIRAG_TEST_LLM_URL points the tests at another
    OpenAI-compatible server instead (a running one, or a real model)."""
    if os.environ.get("OMNIRAG_TEST_LLM_URL"):
        yield os.environ["OMNIRAG_TEST_LLM_URL"]
        return
    from omnirag.core.testing import llm_server

    with llm_server(threads=1) as base:
        yield base


GatewayFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="session")
def gateway_factory(
    redis_url: str,
    embedder_url: str,
    retriever_url: str,
    llm_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayFactory:
    from omnirag.gateway.app import create_app as create_gateway

    uploads = tmp_path_factory.mktemp("uploads")

    @contextmanager
    def make(**overrides: Any) -> Iterator[str]:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "embedder_url": embedder_url,
            "retriever_url": retriever_url,
            "llm_base_url": llm_url,
            "dev_key": DEV_KEY,
            "uploads_dir": uploads,
            "log_json": False,
        }
        values.update(overrides)
        app = create_gateway(GatewaySettings(**values))
        make.last_app = app  # type: ignore[attr-defined]
        with serve_in_thread(app, ready_path="/healthz") as base:
            yield base

    return make


@pytest.fixture(scope="session")
def gateway_url(gateway_factory: GatewayFactory) -> Iterator[str]:
    with gateway_factory() as base:
        yield base
