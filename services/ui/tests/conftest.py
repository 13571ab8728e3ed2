"""Fixtures: the whole stack for real — Redis, the embedder, the example knowledge base indexed by
the indexer, the retriever, the indexer's ingest worker, the local llama.cpp LLM, the gateway — and
UIs served over HTTP in front of it. One stack per test session; a UI is cheap to add."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from omnirag.core.testing import redis_server, serve_in_thread
from omnirag.indexer.testing import WorkerThread, index_knowledge_bases

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEV_KEY = "ui-test-dev-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
# Answers are kept short: the tests check the streaming, the sources and the grounding, and a
# 135M model's prose is no better for being longer.
MAX_TOKENS = 24


def pytest_configure(config: pytest.Config) -> None:
    # Gradio's queue statistics trip pandas 3 deprecation warnings on every event: not ours.
    config.addinivalue_line("filterwarnings", "ignore:::gradio.queueing")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture(scope="session")
def embedder_url() -> Iterator[str]:
    from omnirag.embedder.app import create_app
    from omnirag.embedder.config import EmbedderSettings

    with serve_in_thread(create_app(EmbedderSettings(log_json=False))) as base:
        yield base


@pytest.fixture(scope="session")
def index_root(tmp_path_factory: pytest.TempPathFactory, embedder_url: str) -> Path:
    """The example knowledge base of ``make run`` (config/knowledge-bases.yaml → docs/), indexed."""
    root = tmp_path_factory.mktemp("index")
    return index_knowledge_bases(REPO / "config/knowledge-bases.yaml", root, embedder_url)


@pytest.fixture(scope="session")
def retriever_url(index_root: Path, embedder_url: str) -> Iterator[str]:
    from omnirag.retriever.app import create_app
    from omnirag.retriever.config import RetrieverSettings

    settings = RetrieverSettings(
        index_root=index_root, embedder_url=embedder_url, poll_seconds=0.5, log_json=False
    )
    with serve_in_thread(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="session")
def uploads_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="session")
def indexer_worker(
    redis_url: str, embedder_url: str, index_root: Path, uploads_dir: Path
) -> Iterator[WorkerThread]:
    from omnirag.indexer.config import IndexerSettings

    settings = IndexerSettings(
        index_root=index_root,
        embedder_url=embedder_url,
        redis_url=redis_url,
        uploads_dir=uploads_dir,
        prune_grace_seconds=0,
    )
    with WorkerThread(settings, uploads_dir) as worker:
        yield worker


@pytest.fixture(scope="session")
def llm_url() -> Iterator[str]:
    """The packaged SmolLM2 through llama.cpp; OMNIRAG_TEST_LLM_URL points the tests at another
    OpenAI-compatible server instead."""
    if os.environ.get("OMNIRAG_TEST_LLM_URL"):
        yield os.environ["OMNIRAG_TEST_LLM_URL"]
        return
    from omnirag.core.testing import llm_server

    with llm_server(threads=1) as base:
        yield base


GatewayFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="session")
def gateway_factory(
    redis_url: str, embedder_url: str, retriever_url: str, llm_url: str, uploads_dir: Path
) -> GatewayFactory:
    from omnirag.gateway.app import create_app
    from omnirag.gateway.config import GatewaySettings

    @contextmanager
    def make(**overrides: Any) -> Iterator[str]:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "embedder_url": embedder_url,
            "retriever_url": retriever_url,
            "llm_base_url": llm_url,
            "dev_key": DEV_KEY,
            "uploads_dir": uploads_dir,
            "context_max_chars": 2000,  # a short prompt keeps a 1-thread CPU model quick
            "log_json": False,
        } | overrides
        with serve_in_thread(create_app(GatewaySettings(**values)), ready_path="/healthz") as base:
            yield base

    return make


@pytest.fixture(scope="session")
def gateway_url(gateway_factory: GatewayFactory, indexer_worker: WorkerThread) -> Iterator[str]:
    with gateway_factory() as base:
        yield base


UiFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="session")
def ui_factory(gateway_url: str) -> UiFactory:
    from omnirag.ui.app import create_app
    from omnirag.ui.config import UiSettings

    @contextmanager
    def make(ready_path: str = "/readyz", **overrides: Any) -> Iterator[str]:
        values: dict[str, Any] = {
            "gateway_url": gateway_url,
            "api_key": DEV_KEY,
            "max_tokens": MAX_TOKENS,
            "top_k": 3,
            "ingest_poll_seconds": 0.2,
            "log_json": False,
        } | overrides
        # Gradio clients keep a heartbeat stream open to the end: do not wait 5 s for it.
        with serve_in_thread(
            create_app(UiSettings(**values)), ready_path=ready_path, graceful_seconds=1
        ) as base:
            yield base

    return make


@pytest.fixture(scope="session")
def ui_url(ui_factory: UiFactory) -> Iterator[str]:
    with ui_factory() as base:
        yield base


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
