"""Fixtures: the real embedder served over real HTTP, and the same model loaded in-process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from fastapi import FastAPI
from omnirag_harness.servers import serve_in_thread

from omnirag.embedder.app import create_app
from omnirag.embedder.config import EmbedderSettings

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def model_name() -> str:
    return MODEL


@pytest.fixture(scope="session")
def st_model():
    """The model the service serves, loaded directly: the reference every answer is checked against."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(EmbedderSettings().resolved_model_path(), device="cpu")


@pytest.fixture(scope="session")
def embedder() -> Iterator[tuple[str, FastAPI]]:
    app = create_app(EmbedderSettings(log_json=False))
    with serve_in_thread(app) as base:
        yield base, app


@pytest.fixture(scope="session")
def base_url(embedder) -> str:
    return embedder[0]


@pytest.fixture
def gated_service():
    return _gated_service


@contextmanager
def _gated_service(**settings) -> Iterator[tuple[str, FastAPI, threading.Event, list[list[str]]]]:
    """An embedder whose inference thread waits at a gate before each pass (a mechanism, not a fake:
    every pass still runs the real model). Lets a test fill the queue or hang up deterministically."""
    app = create_app(EmbedderSettings(log_json=False, **settings))
    with serve_in_thread(app) as base:
        service = app.state.service
        real = service.queue.run_pass
        gate = threading.Event()
        passes: list[list[str]] = []

        def gated(key, texts):
            passes.append(list(texts))
            gate.wait(60)
            return real(key, texts)

        service.queue.run_pass = gated
        try:
            yield base, app, gate, passes
        finally:
            gate.set()
