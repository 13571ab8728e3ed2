"""Fixtures: the whole stack for real (Redis, the embedder, the indexed example knowledge base, the
retriever, the local LLM, a gateway, the UI, the upload worker as its own process, Redis's exporter)
and Debian's Prometheus scraping every one of them, with the chart's alert rules loaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from typing import Any

import pytest
from omnirag_harness.gateway_stack import *  # noqa: F403 (fixtures, registered by being imported)
from omnirag_harness.gateway_stack import DEV_KEY


@pytest.fixture(scope="session")
def gateway_defaults() -> dict[str, Any]:
    return {"dev_key": DEV_KEY}
