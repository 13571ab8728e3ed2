"""Fixtures: the whole stack for real — Redis, the embedder, the example knowledge base indexed by
the indexer, the retriever, the indexer's ingest worker, the local llama.cpp LLM, the gateway — and
UIs served over HTTP in front of it. One stack per test session; a UI is cheap to add. A second
gateway serves two models: the local one and a reasoning model replayed by the scripted upstream."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# The stack's fixtures, shared with the gateway's tests.
from omnirag_harness.gateway_stack import *  # noqa: F403 (fixtures, registered by being imported)
from omnirag_harness.gateway_stack import GatewayFactory
from omnirag_harness.indexer import WorkerThread
from omnirag_harness.scripted_llm import ReasoningField, ScriptedLLM, scripted_llm
from omnirag_harness.servers import serve_in_thread
from omnirag_harness.ui_stack import (
    DEV_KEY,
    LOCAL,
    MAX_TOKENS,
    REASONED_ANSWER,
    REASONER,
    REASONING,
    UiFactory,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def pytest_configure(config: pytest.Config) -> None:
    # Gradio's queue statistics trip pandas 3 deprecation warnings on every event: not ours.
    config.addinivalue_line("filterwarnings", "ignore:::gradio.queueing")


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
def gateway_defaults() -> dict[str, Any]:
    # A short prompt keeps a 1-thread CPU model quick.
    return {"dev_key": DEV_KEY, "context_max_chars": 2000}


@pytest.fixture(scope="session")
def gateway_url(gateway_factory: GatewayFactory, indexer_worker: WorkerThread) -> Iterator[str]:
    with gateway_factory() as base:
        yield base


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
            # No login unless a test asks for one, whatever a developer's .env (make run) holds.
            "local_password": None,
            "oidc_issuer": None,
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
def oidc_issuer() -> Iterator[str]:
    """A real OpenID Connect provider (oidc-provider-mock: discovery, authorize with PKCE, token,
    userinfo, signed ID tokens), any client id accepted; its login form asks for a subject."""
    import oidc_provider_mock

    # require_nonce: the provider refuses an authorization request without one, so the UI must send it.
    with oidc_provider_mock.run_server_in_thread(require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def two_models(
    gateway_factory: GatewayFactory, ui_factory: UiFactory, llm_url: str
) -> Iterator[tuple[str, str, ScriptedLLM]]:
    """(UI, gateway, upstream): a gateway serving two models, as a release with the chart's list
    does: the real llama.cpp one (the default) and a reasoning model, which cannot run here and is
    replayed by the scripted upstream as vLLM with ``--reasoning-parser`` streams it (the field
    ``reasoning``, as the chart's vLLM writes it; a few characters a delta); ``upstream.requests``
    is what the gateway asked it."""
    script = ReasoningField(reasoning=REASONING, answer=REASONED_ANSWER, chunk_chars=3)
    with scripted_llm(script, models=("ds-qwen3-8b",)) as upstream:
        models = [
            {"name": LOCAL, "base_url": llm_url, "capabilities": ["text", "tools"]},
            {
                "name": REASONER,
                "base_url": str(upstream),
                "upstream_model": "ds-qwen3-8b",
                "api_key": "scripted-key",
                "capabilities": ["text", "reasoning"],
                "thinking_off": None,
                "reasoning_budget": 256,
            },
        ]
        with gateway_factory(models=json.dumps(models)) as gateway, ui_factory(gateway_url=gateway) as ui:
            yield ui, gateway, upstream
