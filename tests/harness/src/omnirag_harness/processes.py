"""The services as processes, started one way for the tests, the benches and ``make run``:
``python -m omnirag.<name>`` (the LLM: ``scripts/llm_server.py``) with ``<PREFIX>HOST`` and
``<PREFIX>PORT`` in its environment, in a session of its own, waited for until its readiness path
answers, stopped with everything it started. Redis likewise (``redis-server``, waited for by PING).

The local stack's addresses are read from where they are defined, never written again: a service's
port is the default of its settings class's ``port`` field, the LLM's is ``DEFAULT_PORT`` of
``scripts/llm_server.py``, Redis' is in the default of the gateway's ``redis_url``.

Also what the benches count a process's and the machine's CPU with (``/proc``).

Only the standard library at import time: benches import this into processes whose CPU they count
(a settings class is imported when a default port is asked for).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import importlib
import importlib.util
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Self
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[4]  # tests/harness/src/omnirag_harness/processes.py
LLM_SCRIPT = REPO / "scripts" / "llm_server.py"
LOOPBACK = "127.0.0.1"

Ready = Callable[[int, bytes], bool]


class ServiceError(RuntimeError):
    """A process exited, or was not ready in time; the message ends with the last lines it logged."""


@dataclass(frozen=True)
class Service:
    """How one service of the stack is started and found: its env prefix, its readiness path, and
    the settings class (``module:Class``) whose ``port`` default is its local port."""

    name: str
    env_prefix: str
    ready_path: str
    settings: str | None = None

    @property
    def argv(self) -> list[str]:
        if self.name == "llm":
            return [sys.executable, str(LLM_SCRIPT)]
        return [sys.executable, "-m", f"omnirag.{self.name}"]

    def default_port(self) -> int:
        if self.settings is None:
            return int(llm_script().DEFAULT_PORT)
        module, _, cls = self.settings.partition(":")
        return int(getattr(importlib.import_module(module), cls).model_fields["port"].default)

    def address_env(self, port: int, host: str = LOOPBACK) -> dict[str, str]:
        return {f"{self.env_prefix}HOST": host, f"{self.env_prefix}PORT": str(port)}

    def ready_url(self, port: int | None = None) -> str:
        """Its readiness URL on ``port`` (the local default when None), as this host reaches it."""
        return f"http://{LOOPBACK}:{port or self.default_port()}{self.ready_path}"


SERVICES = {
    s.name: s
    for s in (
        Service("embedder", "EMBEDDER_", "/readyz", "omnirag.embedder.config:EmbedderSettings"),
        Service("retriever", "RETRIEVER_", "/readyz", "omnirag.retriever.config:RetrieverSettings"),
        Service("llm", "LLM_", "/v1/models"),
        Service("gateway", "GATEWAY_", "/readyz", "omnirag.gateway.config:GatewaySettings"),
        Service("ui", "UI_", "/readyz", "omnirag.ui.config:UiSettings"),
    )
}


@functools.cache
def llm_script() -> ModuleType:
    """``scripts/llm_server.py`` as a module (its ``main`` runs only as a script)."""
    spec = importlib.util.spec_from_file_location("omnirag_llm_server", LLM_SCRIPT)
    if spec is None or spec.loader is None or not LLM_SCRIPT.is_file():
        raise ServiceError(f"{LLM_SCRIPT} not found (the local LLM needs a source checkout)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_url(name: str) -> str:
    """The local stack's address of ``name`` (a service, or ``redis``): its settings' default.
    The LLM's is its OpenAI base URL (``…/v1``)."""
    if name == "redis":
        from omnirag.gateway.config import GatewaySettings

        return str(GatewaySettings.model_fields["redis_url"].default)
    base = f"http://{LOOPBACK}:{SERVICES[name].default_port()}"
    return base + "/v1" if name == "llm" else base


def local_redis_port() -> int:
    port = urlsplit(local_url("redis")).port
    if port is None:
        raise ServiceError("the gateway's default redis_url names no port")
    return port


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# Loopback only, and never through a proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET (an error status too); OSError when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers_200(status: int, body: bytes) -> bool:
    return status == 200


def wait_ready(
    url: str,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    ready: Ready = answers_200,
    interval: float = 0.1,
) -> None:
    """Poll ``url`` until ``ready(status, body)`` (by default: it answers 200). ``alive`` ends the
    wait early when the process behind it has died (ServiceError); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ServiceError(f"the server behind {url} exited before it was ready: {last}")
        try:
            status, body = http_get(url, timeout=2)
            if ready(status, body):
                return
            last = f"{status} {body[:500].decode(errors='replace')}"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            last = str(exc)
        time.sleep(interval)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped. A process that leads its own session
    is signalled with its whole group (what it started goes with it)."""
    if proc.poll() is not None:
        return

    def signal_it(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    signal_it(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
        proc.wait(timeout=timeout)


class ServiceProcess:
    """One server process in its own session, its output in ``log`` (a path; a temporary file when
    None), ready when ``ready_path`` answers as ``ready`` wants. ``start`` waits for that and returns
    the seconds it took; ``stop`` stops it and what it started."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        port: int,
        log: Path | None = None,
        *,
        ready_path: str = "/readyz",
        ready: Ready = answers_200,
        append_log: bool = False,
    ) -> None:
        self.name, self.argv, self.env, self.port = name, argv, dict(env), port
        self.log_path = log
        self.ready_path, self.ready, self.append_log = ready_path, ready, append_log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError(f"{self.name} was not started")
        return self.proc.pid

    def url(self, path: str = "") -> str:
        """``path`` on this server, as this host reaches it."""
        return f"http://{LOOPBACK}:{self.port}{path}"

    def start(self, timeout: float) -> float:
        started = time.perf_counter()
        if self.log_path is None:
            self._log_file = tempfile.TemporaryFile()  # noqa: SIM115 - read back by log_tail, closed by stop
            log: IO[bytes] = self._log_file
        else:
            log = self.log_path.open("ab" if self.append_log else "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if self.log_path is not None:
                log.close()
        proc = self.proc
        try:
            wait_ready(
                self.url(self.ready_path), timeout, alive=lambda: proc.poll() is None, ready=self.ready
            )
        except ServiceError:
            raise ServiceError(f"{self.name} exited with {proc.wait()}:\n{self.log_tail()}") from None
        except TimeoutError:
            raise ServiceError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}") from None
        return time.perf_counter() - started

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError, ValueError):
            if self._log_file is not None:
                self._log_file.seek(0)
                text = self._log_file.read().decode(errors="replace")
            elif self.log_path is not None:
                text = self.log_path.read_text(errors="replace")
            else:
                return ""
            return "\n".join(text.splitlines()[-lines:])
        return ""


def service_process(
    name: str,
    log: Path | None = None,
    *,
    port: int | None = None,
    host: str = LOOPBACK,
    base_env: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
    ready: Ready = answers_200,
    append_log: bool = False,
) -> ServiceProcess:
    """``name`` of :data:`SERVICES` as a process (not started yet) on ``port`` (a free one when
    None): ``base_env`` (this process's environment when None), its address variables, then
    ``settings`` (more of its variables, e.g. ``{"EMBEDDER_LOG_LEVEL": "WARNING"}``)."""
    service = SERVICES[name]
    port = port or free_port()
    env = {
        **(os.environ if base_env is None else base_env),
        **service.address_env(port, host),
        **(settings or {}),
    }
    return ServiceProcess(
        name, service.argv, env, port, log, ready_path=service.ready_path, ready=ready, append_log=append_log
    )


@contextlib.contextmanager
def started(process: ServiceProcess, timeout: float) -> Iterator[ServiceProcess]:
    """``process`` started and ready for the block; stopped after it, also when it failed to start."""
    try:
        process.start(timeout)
        yield process
    finally:
        process.stop()


def redis_argv(
    port: int,
    directory: str | Path,
    *,
    bind: str = LOOPBACK,
    password: str | None = None,
    appendonly: bool = False,
) -> list[str]:
    """redis-server's command line: no RDB snapshots, an append-only file only when asked."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(
            "redis-server is not installed; `make setup` installs it (apt-get install redis-server)"
        )
    auth = ["--requirepass", password] if password else []
    return [
        *(binary, *auth, "--port", str(port), "--bind", bind, "--save", ""),
        *("--appendonly", "yes" if appendonly else "no", "--dir", str(directory), "--protected-mode", "yes"),
    ]


class RedisProcess:
    """redis-server on ``port`` (a free one when None) with its data in ``directory``, in a session
    of its own; ``start`` (or ``with``) waits until it answers PING. ``url`` is how this host
    reaches it. Started again on the same port and directory with ``appendonly``, it comes back with
    its data (a restart under test)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        port: int | None = None,
        bind: str = LOOPBACK,
        password: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.argv = redis_argv(self.port, directory, bind=bind, password=password, appendonly=appendonly)
        self.url = f"redis://{':' + password + '@' if password else ''}{LOOPBACK}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError("redis-server was not started")
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        ping = (f"AUTH {self.password}\r\n" if self.password else "").encode() + b"PING\r\n"
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((LOOPBACK, self.port), timeout=0.5) as c,
            ):
                c.sendall(ping)
                if b"+PONG" in c.recv(64):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc; NaN once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (every core, from the first line of /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
