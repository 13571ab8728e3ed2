"""The whole stack for real, as the gateway's tests start it (Redis, the embedder, the example
knowledge base indexed by the indexer, the retriever, the llama.cpp LLM and a gateway), for the
property-based API tests over each service's OpenAPI schema."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from typing import Any

import pytest
from omnirag_harness.gateway_stack import *  # noqa: F403 (fixtures, registered by being imported)
from omnirag_harness.gateway_stack import GatewayFactory

DEV_KEY = "api-test-dev-key-0123456789abcdef"


@pytest.fixture(scope="session")
def gateway_defaults() -> dict[str, Any]:
    # A few tokens per answer: the tests check the shape of answers, not their text, and a 1-thread
    # CPU model would otherwise spend seconds on each generated chat request.
    return {"dev_key": DEV_KEY, "max_tokens_cap": 16}


@pytest.fixture(scope="session")
def gateway_url(gateway_factory: GatewayFactory) -> Iterator[str]:
    with gateway_factory() as base:
        yield base


@pytest.fixture(scope="session")
def ui_url(gateway_url: str) -> Iterator[str]:
    """The UI in front of the gateway, without login (as ``make run`` serves it to one user)."""
    from omnirag_harness.servers import serve_in_thread

    from omnirag.ui.app import create_app
    from omnirag.ui.config import UiSettings

    settings = UiSettings(
        gateway_url=gateway_url, api_key=DEV_KEY, log_json=False, local_password=None, oidc_issuer=None
    )
    with serve_in_thread(create_app(settings), graceful_seconds=1) as base:
        yield base
