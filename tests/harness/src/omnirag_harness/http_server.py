"""Small HTTP servers for tests, on the standard library's threaded server: a web site made of
routes that records every request (:class:`Site`), and the plumbing under it and under the
protocol servers of this package (the fake hub, the scripted LLM, the recording proxy):
:class:`LocalHTTPServer` binds a free port, serves from a thread and stops cleanly.

For what a test must control at the byte level (a body that never ends, a dropped connection) a
route writes to the request handler itself.
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from omnirag_harness.processes import LOOPBACK

Route = Callable[[BaseHTTPRequestHandler], None]


class LocalHTTPServer(ThreadingHTTPServer):
    """``handler`` on ``host`` (loopback unless a container must reach it) and a free port, one
    daemon thread per connection; ``start`` serves from a thread, ``stop`` shuts it down and closes
    the socket (both through ``with``). ``tls`` wraps the listening socket."""

    daemon_threads = True

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        host: str = LOOPBACK,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__((host, 0), handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """Its base URL as this host reaches it."""
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a byte cap, a timeout under test) is what such tests do; a TLS
        # handshake a client refused too. Anything else is a bug in the test server: printed.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | ssl.SSLError):
            return
        super().handle_error(request, client_address)


def send(
    h: BaseHTTPRequestHandler,
    status: int,
    body: str | bytes = b"",
    content_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """A whole response with its Content-Length. A header name's ``_`` becomes ``-``, so headers
    can be given as keyword arguments (``Content_Encoding="gzip"``)."""
    data = body.encode() if isinstance(body, str) else body
    h.send_response(status)
    if content_type is not None:
        h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        h.send_header(name.replace("_", "-"), value)
    h.end_headers()
    h.wfile.write(data)


@dataclass(frozen=True)
class Seen:
    """One request a :class:`Site` got."""

    method: str
    path: str
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


@dataclass
class Site:
    """A web site for a test: ``routes`` map a path (with its query) to what answers it, anything
    else goes to ``fallback`` (None: 404). Every request is kept in ``requests``; ``max_inflight``
    is the most it served at once. ``page_type`` is the Content-Type :meth:`page` gives by default."""

    page_type: str = "text/plain"
    fallback: Route | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str, host: str = LOOPBACK) -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]

    def page(self, path: str, body: str | bytes, content_type: str | None = None, **headers: str) -> None:
        kind = content_type or self.page_type
        self.routes[path] = lambda h: send(h, 200, body, kind, headers)

    def stream(self, path: str, body: bytes, content_type: str | None = None, chunk: int = 64 * 1024) -> None:
        """``body`` in pieces and without a Content-Length: only counting what arrives tells a
        reader how big it is (what a streamed byte cap is tested with)."""
        kind = content_type or self.page_type

        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", kind)
            h.end_headers()
            for start in range(0, len(body), chunk):
                h.wfile.write(body[start : start + chunk])
                h.wfile.flush()

        self.routes[path] = route

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = lambda h: send(h, status, b"", "text/plain", {"Location": location})

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append(Seen(h.command, h.path, dict(h.headers.items()), time.monotonic()))
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            route = self.routes.get(h.path, self.fallback)
            if route is None:
                send(h, 404, "not found", "text/plain")
            else:
                route(h)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what byte caps and timeouts under test do
        finally:
            with self.lock:
                self.inflight -= 1


@contextmanager
def serve_site(site: Site | None = None, *, tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    """``site`` (a new, empty one when None) served on a free loopback port for the block."""
    state = site if site is not None else Site()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state._serve(self)

        def do_HEAD(self) -> None:
            state._serve(self)

        def do_POST(self) -> None:
            state._serve(self)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: pytest shows the test's own output

    with LocalHTTPServer(Handler, tls=tls) as server:
        state.port = server.port
        yield state
