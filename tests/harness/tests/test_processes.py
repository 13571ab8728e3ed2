"""The harness' process starter and the local stack's addresses.

The addresses are read from the settings classes; the cross-service URL defaults those classes
carry (the gateway's embedder_url, the UI's gateway_url…) must name the same ports, or ``make run``
would start services that cannot find each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from omnirag_harness.processes import (
    REPO,
    SERVICES,
    RedisProcess,
    ServiceError,
    ServiceProcess,
    free_port,
    http_get,
    local_url,
    redis_argv,
    service_process,
    started,
)
from pydantic import BaseModel

from omnirag.embedder.config import EmbedderSettings
from omnirag.gateway.config import GatewaySettings
from omnirag.indexer.config import IndexerSettings
from omnirag.retriever.config import RetrieverSettings
from omnirag.ui.config import UiSettings


def default(settings: type[BaseModel], name: str) -> object:
    return settings.model_fields[name].default


def test_local_addresses_are_the_settings_defaults() -> None:
    assert local_url("embedder") == f"http://127.0.0.1:{default(EmbedderSettings, 'port')}"
    assert local_url("retriever") == f"http://127.0.0.1:{default(RetrieverSettings, 'port')}"
    assert local_url("gateway") == f"http://127.0.0.1:{default(GatewaySettings, 'port')}"
    assert local_url("ui") == f"http://127.0.0.1:{default(UiSettings, 'port')}"
    assert local_url("redis") == default(GatewaySettings, "redis_url")


def test_the_services_find_each_other_at_the_local_defaults() -> None:
    assert default(GatewaySettings, "embedder_url") == local_url("embedder")
    assert default(GatewaySettings, "retriever_url") == local_url("retriever")
    assert default(GatewaySettings, "llm_base_url") == local_url("llm")
    assert default(RetrieverSettings, "embedder_url") == local_url("embedder")
    assert default(IndexerSettings, "embedder_url") == local_url("embedder")
    assert default(UiSettings, "gateway_url") == local_url("gateway")


def test_a_service_gets_its_address_from_its_env_prefix() -> None:
    process = service_process("retriever", port=4321, settings={"RETRIEVER_LOG_LEVEL": "WARNING"})
    assert process.argv == [sys.executable, "-m", "omnirag.retriever"]
    assert process.env["RETRIEVER_HOST"] == "127.0.0.1"
    assert process.env["RETRIEVER_PORT"] == "4321"
    assert process.env["RETRIEVER_LOG_LEVEL"] == "WARNING"
    assert process.url("/readyz") == "http://127.0.0.1:4321/readyz"
    assert SERVICES["llm"].argv == [sys.executable, str(REPO / "scripts/llm_server.py")]
    assert SERVICES["llm"].ready_url(5) == "http://127.0.0.1:5/v1/models"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for this purpose.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_process_is_ready_when_its_path_answers_and_stops_with_what_it_started(tmp_path: Path) -> None:
    """A stand-in server (the standard library's) that starts a child of its own: stop ends both."""
    port = free_port()
    pidfile = tmp_path / "child.pid"
    script = f"sleep 600 & echo $! > {pidfile}; exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    argv = ["sh", "-c", script]
    process = ServiceProcess("site", argv, os.environ, port, tmp_path / "site.log", ready_path="/")
    with started(process, timeout=30):
        assert http_get(process.url("/"))[0] == 200
        child = int(pidfile.read_text())
        assert alive(child)
    assert process.proc is not None and process.proc.returncode is not None
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_process_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('cannot start: no model'); sys.exit(3)"]
    process = ServiceProcess("broken", argv, os.environ, free_port(), tmp_path / "broken.log")
    with pytest.raises(ServiceError, match="broken exited with 3:\ncannot start: no model"):
        process.start(timeout=30)


def test_a_process_that_never_gets_ready_is_stopped_and_reported(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(600)"]
    process = ServiceProcess("slow", argv, os.environ, free_port(), None)  # its log: a temporary file
    with pytest.raises(ServiceError, match="slow not ready after 1s:\nloading"), started(process, timeout=1):
        pass
    assert process.proc is not None and process.proc.returncode is not None


def test_redis_answers_at_its_url_and_keeps_an_append_only_file_only_when_asked(tmp_path: Path) -> None:
    def appendonly(argv: list[str]) -> str:
        return argv[argv.index("--appendonly") + 1]

    assert appendonly(redis_argv(6379, tmp_path)) == "no"
    assert appendonly(redis_argv(6379, tmp_path, appendonly=True)) == "yes"
    server = RedisProcess(tmp_path, password="x" * 24)
    server.start()
    try:
        assert server.url == f"redis://:{'x' * 24}@127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode is not None


def test_the_local_stack_prints_the_addresses_it_uses() -> None:
    for name in ("redis", "llm", "gateway"):
        out = subprocess.run(
            [sys.executable, "scripts/local_stack.py", "url", name],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert out.stdout.strip() == local_url(name)
