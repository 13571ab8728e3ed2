"""Circuit breakers in front of the embedder and the retriever, against a real hung upstream: a TCP
server that accepts connections and never answers (a process alive but stuck), which can later
start forwarding to the real service (the upstream recovered).

The assertions are on mechanisms, not on wall time: how many connections the hung server received,
the breaker's state in /metrics, the status and headers of the answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
from omnirag_harness.gateway_stack import AUTH
from omnirag_harness.servers import metric_value

QUESTION = "Which port does the gateway listen on?"


class HungUpstream:
    """A real server on a loopback port. While hung it accepts each connection and holds it without
    reading or answering; after :meth:`recover` it forwards each new connection to the real service.
    ``connections`` counts every connection it accepted."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self._target: tuple[str, int] | None = None
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="hung-upstream", daemon=True)
        self._thread.start()

    def recover(self, target_url: str) -> None:
        url = httpx.URL(target_url)
        assert url.host and url.port
        self._target = (url.host, url.port)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._held.append(conn)
            if self._target is not None:
                threading.Thread(target=self._forward, args=(conn, self._target), daemon=True).start()

    def _forward(self, client: socket.socket, target: tuple[str, int]) -> None:
        upstream = socket.create_connection(target)
        with self._lock:
            self._held.append(upstream)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in self._held:
                conn.close()


@contextmanager
def hung_upstream() -> Iterator[HungUpstream]:
    server = HungUpstream()
    try:
        yield server
    finally:
        server.close()


def chat(base: str, **extra: Any) -> dict[str, Any]:
    r = httpx.post(
        base + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, **extra},
        headers=AUTH,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    if extra.get("stream"):
        tails = [
            json.loads(line[len("data: ") :])
            for line in r.text.splitlines()
            if line.startswith("data: {") and '"omnirag"' in line
        ]
        return dict(tails[-1]["omnirag"])
    return dict(r.json()["omnirag"])


def circuit(base: str, upstream: str) -> float:
    return metric_value(
        httpx.get(base + "/metrics").text, "omnirag_gateway_circuit_state", f'upstream="{upstream}"'
    )


def test_hung_retriever_opens_the_circuit_and_chats_answer_degraded_without_calling_it(
    gateway_factory,
) -> None:  # type: ignore[no-untyped-def]
    with (
        hung_upstream() as hung,
        gateway_factory(
            retriever_url=hung.url, upstream_timeout=0.5, circuit_failures=2, circuit_cooldown_seconds=600
        ) as base,
    ):
        assert circuit(base, "retriever") == 0
        for _ in range(2):  # each waits the timeout: the breaker is still closed
            assert chat(base)["degraded"] == ["retriever"]
        assert hung.connections == 2
        assert circuit(base, "retriever") == 2  # open
        for stream in (False, True):
            assert chat(base, stream=stream)["degraded"] == ["retriever"]
        # The chats after it opened never reached the hung retriever, so none waited its timeout.
        assert hung.connections == 2
        assert circuit(base, "embedder") == 0


def test_half_open_probe_finds_the_retriever_back_and_closes_the_circuit(
    gateway_factory, retriever_url: str
) -> None:  # type: ignore[no-untyped-def]
    with (
        hung_upstream() as hung,
        gateway_factory(
            retriever_url=hung.url, upstream_timeout=0.5, circuit_failures=1, circuit_cooldown_seconds=0.5
        ) as base,
    ):
        assert chat(base)["degraded"] == ["retriever"]
        assert circuit(base, "retriever") == 2
        hung.recover(retriever_url)
        # Wait for the event (the probe after the cool-down closing the circuit), not for a time.
        deadline = time.monotonic() + 60
        while True:
            r = httpx.get(base + "/v1/collections", headers=AUTH, timeout=30)
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable", r.text
            assert int(r.headers["retry-after"]) >= 1
            assert time.monotonic() < deadline, "the circuit never closed"
            time.sleep(0.1)
        assert circuit(base, "retriever") == 0
        outcome = chat(base)
        assert outcome["degraded"] == [] and outcome["citations"]


def test_hung_embedder_makes_the_embeddings_proxy_503_with_retry_after_once_open(
    gateway_factory,
) -> None:  # type: ignore[no-untyped-def]
    body = {"input": ["hello"], "model": "m"}
    with (
        hung_upstream() as hung,
        gateway_factory(
            embedder_url=hung.url, upstream_timeout=0.2, circuit_failures=2, circuit_cooldown_seconds=600
        ) as base,
    ):
        for _ in range(2):
            r = httpx.post(base + "/v1/embeddings", json=body, headers=AUTH, timeout=60)
            assert r.status_code == 502, r.text
        assert circuit(base, "embedder") == 2
        for _ in range(3):
            r = httpx.post(base + "/v1/embeddings", json=body, headers=AUTH, timeout=60)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "upstream_unavailable"
            assert 1 <= int(r.headers["retry-after"]) <= 600
        assert hung.connections == 2


def test_breakers_off_with_zero_failures(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    with (
        hung_upstream() as hung,
        gateway_factory(retriever_url=hung.url, upstream_timeout=0.3, circuit_failures=0) as base,
    ):
        for _ in range(2):
            assert chat(base)["degraded"] == ["retriever"]
        assert hung.connections == 2  # every chat still tries the retriever
        assert "omnirag_gateway_circuit_state{" not in httpx.get(base + "/metrics").text


def test_fail_closed_retrieval_with_the_circuit_open_is_503_with_retry_after(
    gateway_factory,
) -> None:  # type: ignore[no-untyped-def]
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
    with (
        hung_upstream() as hung,
        gateway_factory(
            retriever_url=hung.url,
            upstream_timeout=0.3,
            retrieval_fail_closed=True,
            circuit_failures=1,
            circuit_cooldown_seconds=600,
        ) as base,
    ):
        first = httpx.post(base + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        assert first.status_code == 503 and first.json()["error"]["code"] == "retriever_unavailable"
        again = httpx.post(base + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        assert again.status_code == 503 and again.json()["error"]["code"] == "retriever_unavailable"
        assert 1 <= int(again.headers["retry-after"]) <= 600
        assert hung.connections == 1
