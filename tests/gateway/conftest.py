"""Fixtures: the whole stack for real — Redis, the embedder, the example knowledge base indexed by
the indexer, the retriever, the local llama.cpp LLM — and gateways served over HTTP in front of it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from typing import Any

import pytest

# The stack's fixtures, as the UI's tests (tests/ui) take them.
from omnirag_harness.gateway_stack import *  # noqa: F403 (fixtures, registered by being imported)
from omnirag_harness.gateway_stack import DEV_KEY, GatewayFactory


@pytest.fixture(scope="session")
def gateway_defaults() -> dict[str, Any]:
    return {"dev_key": DEV_KEY}


@pytest.fixture(scope="session")
def gateway_url(gateway_factory: GatewayFactory) -> Iterator[str]:
    with gateway_factory() as base:
        yield base
