"""The common shell of every service: middleware, errors, ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnirag.core.errors import error_body, install_error_handlers
from omnirag.core.health import Readiness
from omnirag.core.logging import REQUEST_ID_HEADER, accept_request_id, request_id_var
from omnirag.core.metrics import ServiceMetrics
from omnirag.core.responses import JSONResponse, dumps
from omnirag.core.settings import ServiceSettings

log = logging.getLogger("omnirag.http")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
_UNMATCHED = "unmatched"  # one label for every unknown path, so scanners cannot blow up cardinality


class ObservabilityMiddleware:
    """Request id in and out, a body-size bound, request metrics and a log line per request.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched and the
    overhead per request stays a few microseconds.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, settings: ServiceSettings) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = settings.max_body_bytes
        self.slow = settings.slow_request_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = accept_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        method = scope.get("method", "GET")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.requests_in_flight.inc()
        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._too_large(send_with_id)
                return
            await self.app(scope, self._bounded(receive), send_with_id)
        finally:
            self.metrics.requests_in_flight.dec()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or _UNMATCHED
            self.metrics.requests_total.labels(path, method, str(status)).inc()
            self.metrics.request_seconds.labels(path, str(status)).observe(elapsed)
            level = logging.DEBUG
            if status >= 500:
                level = logging.WARNING
            elif elapsed >= self.slow:
                level = logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "request",
                    extra={
                        "method": method,
                        "path": scope.get("path"),
                        "status": status,
                        "seconds": round(elapsed, 4),
                    },
                )
            request_id_var.reset(token)

    def _bounded(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return bounded_receive

    async def _too_large(self, send: Send) -> None:
        body = dumps(error_body("payload_too_large", f"request body exceeds {self.max_body} bytes"))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")


def health_router(metrics: ServiceMetrics, readiness: Readiness) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="503 until every part the service needs is usable")
    async def readyz() -> Response:
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus text exposition")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def create_service_app(
    service: str,
    settings: ServiceSettings,
    *,
    lifespan: Lifespan | None = None,
    title: str | None = None,
    version: str = "0.1.0",
    description: str = "",
) -> FastAPI:
    """A FastAPI app with omnirag's shared wiring. The service adds its routers and lifespan.

    ``app.state.metrics``, ``app.state.readiness`` and ``app.state.settings`` are set before the
    lifespan runs, so the lifespan can register metrics and flip readiness checks.
    """
    metrics = ServiceMetrics(service)
    readiness = Readiness()
    app = FastAPI(
        title=title or f"omnirag {service}", version=version, description=description, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.readiness = readiness
    install_error_handlers(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body("payload_too_large", str(exc)), status_code=413)

    app.include_router(health_router(metrics, readiness))
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, settings=settings)
    return app


def _freeze_heap() -> None:
    """Leave every object alive now out of the cyclic GC's collections (they are still freed by
    reference counting). A full collection walks every tracked object: with LangChain, the openai
    SDK and OCR loaded that took ~150 ms in the gateway, during which every request in flight waited."""
    gc.collect()
    gc.freeze()


def run(
    app: FastAPI,
    settings: ServiceSettings,
    service: str,
    *,
    freeze_after_startup: bool = False,
    **uvicorn_kwargs: Any,
) -> None:
    """Serve ``app`` with uvicorn, logging through omnirag's formatter.

    The imported libraries and the app live as long as the process and are frozen before serving.
    ``freeze_after_startup`` freezes again once the lifespan has started, for a service whose
    lifespan objects also live until shutdown (never for one that swaps them, such as index
    versions: a frozen object in a reference cycle is never freed).
    """
    import uvicorn

    from omnirag.core.logging import configure_logging

    configure_logging(service, settings.log_level, settings.log_json)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if freeze_after_startup:
                _freeze_heap()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        **uvicorn_kwargs,
    )
    server = Server(config)
    _freeze_heap()
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


__all__ = ["REQUEST_ID_HEADER", "create_service_app", "run"]
