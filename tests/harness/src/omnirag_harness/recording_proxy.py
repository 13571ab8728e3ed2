"""A forwarding HTTP proxy that keeps what passed through it, for tests that must see what the
gateway really sent to a service it calls (the retriever's search query, the LLM's prompt) and
what came back.

It is not a fake: every request goes on to the real service and its answer comes back unchanged
(whole bodies: streamed responses arrive in one piece). Used by the gateway's tests in front of
the retriever and of the local llama.cpp server."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from omnirag_harness.http_server import LocalHTTPServer

__all__ = ["Exchange", "RecordingProxy"]


@dataclass(frozen=True)
class Exchange:
    """One POST that went through: its path, the JSON body sent and the JSON body answered (None
    when either was not JSON)."""

    path: str
    request: Any
    response: Any


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class RecordingProxy:
    """``target`` (a base URL such as ``http://127.0.0.1:8002``) behind a proxy on 127.0.0.1 and a
    free port (``.url``) that keeps every POST in ``.exchanges``; ``.searches`` are the retriever's
    search bodies among them."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                r = httpx.request(
                    method, proxy.target + self.path, content=body, headers=headers, timeout=300
                )
                if method == "POST":
                    with proxy._lock:
                        proxy.exchanges.append(Exchange(self.path, _json(body), _json(r.content)))
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self.server = LocalHTTPServer(Handler).start()
        self.url = self.server.url

    def posts(self, suffix: str) -> list[Exchange]:
        """The POSTs whose path ends with ``suffix`` (``/search``, ``/chat/completions``), in order."""
        with self._lock:
            return [e for e in self.exchanges if e.path.split("?")[0].endswith(suffix)]

    @property
    def searches(self) -> list[dict[str, Any]]:
        """The search bodies the retriever received, in order."""
        return [e.request for e in self.posts("/search")]

    def close(self) -> None:
        self.server.stop()
