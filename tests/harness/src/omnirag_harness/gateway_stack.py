"""pytest fixtures for tests that need the whole stack for real: Redis, the embedder, the example
knowledge base indexed by the indexer, the retriever, the local llama.cpp LLM, and gateways served
over HTTP in front of them. The gateway's and the UI's test suites import the ``*_fixture``
functions into their conftest.py, which registers them under their fixture names (``redis_url``,
``gateway_factory``…); each suite defines a ``gateway_defaults`` fixture, the settings every
gateway it makes gets.

The other services are imported inside the fixtures: the gateway itself never needs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from omnirag_harness.servers import llm_server, redis_server, serve_in_thread

REPO = Path(__file__).resolve().parents[4]
EXAMPLE_KNOWLEDGE_BASES = REPO / "config/knowledge-bases.yaml"
# The development key the gateway suite's gateways accept (its gateway_defaults), and its header.
DEV_KEY = "test-dev-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}

GatewayFactory = Callable[..., AbstractContextManager[str]]

# What a conftest takes with ``from gateway_stack import *``: the type and the fixtures.
__all__ = [
    "GatewayFactory",
    "embedder_url_fixture",
    "gateway_factory_fixture",
    "index_root_fixture",
    "llm_url_fixture",
    "redis_url_fixture",
    "retriever_url_fixture",
    "uploads_dir_fixture",
]


@pytest.fixture(scope="session", name="redis_url")
def redis_url_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture(scope="session", name="embedder_url")
def embedder_url_fixture() -> Iterator[str]:
    from omnirag.embedder.app import create_app
    from omnirag.embedder.config import EmbedderSettings

    with serve_in_thread(create_app(EmbedderSettings(log_json=False))) as base:
        yield base


@pytest.fixture(scope="session", name="index_root")
def index_root_fixture(tmp_path_factory: pytest.TempPathFactory, embedder_url: str) -> Path:
    """The example knowledge base of ``make run`` (config/knowledge-bases.yaml → docs/), indexed."""
    from omnirag_harness.indexer import index_knowledge_bases

    return index_knowledge_bases(EXAMPLE_KNOWLEDGE_BASES, tmp_path_factory.mktemp("index"), embedder_url)


@pytest.fixture(scope="session", name="retriever_url")
def retriever_url_fixture(index_root: Path, embedder_url: str) -> Iterator[str]:
    from omnirag.retriever.app import create_app
    from omnirag.retriever.config import RetrieverSettings

    # A short poll: uploads indexed during a test become searchable within the test's patience.
    settings = RetrieverSettings(
        index_root=index_root, embedder_url=embedder_url, poll_seconds=0.5, log_json=False
    )
    with serve_in_thread(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="session", name="llm_url")
def llm_url_fixture() -> Iterator[str]:
    """The packaged SmolLM2 through llama.cpp; OMNIRAG_TEST_LLM_URL points the tests at another
    OpenAI-compatible server instead (a running one, or a real model)."""
    if os.environ.get("OMNIRAG_TEST_LLM_URL"):
        yield os.environ["OMNIRAG_TEST_LLM_URL"]
        return
    with llm_server(threads=1) as base:
        yield base


@pytest.fixture(scope="session", name="uploads_dir")
def uploads_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="session", name="gateway_factory")
def gateway_factory_fixture(
    redis_url: str,
    embedder_url: str,
    retriever_url: str,
    llm_url: str,
    uploads_dir: Path,
    gateway_defaults: dict[str, Any],
) -> GatewayFactory:
    """``with gateway_factory(**settings) as base_url:`` serves a gateway over the stack; the app
    last made is ``gateway_factory.last_app`` (for tests that look inside it)."""
    from omnirag.gateway.app import create_app
    from omnirag.gateway.config import GatewaySettings

    @contextmanager
    def make(**overrides: Any) -> Iterator[str]:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "embedder_url": embedder_url,
            "retriever_url": retriever_url,
            "llm_base_url": llm_url,
            "uploads_dir": uploads_dir,
            "log_json": False,
        }
        # Never the checkout's .env: `make run` writes the local stack's settings there
        # (GATEWAY_MODELS, a dev key), which would point a test's gateway at the local stack.
        settings = GatewaySettings(**(values | gateway_defaults | overrides), _env_file=None)
        app = create_app(settings)
        make.last_app = app  # type: ignore[attr-defined]
        with serve_in_thread(app, ready_path="/healthz") as base:
            yield base

    return make
