"""The common shell of every service: middleware, errors, ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import gc
import hashlib
import hmac
import logging
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, SecretStr
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnirag.core.errors import (
    RequestBodyError,
    Unauthorized,
    document_errors,
    error_body,
    install_error_handlers,
)
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


class SecurityHeadersMiddleware:
    """Every response says: never frame me (clickjacking of the UI's buttons through an invisible
    iframe), and never guess my content type (an upload served back as text/plain must not run as
    HTML or script). A response that already sets one of them keeps its own."""

    HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"frame-ancestors 'none'"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in self.HEADERS if n not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class InvalidServiceToken(Unauthorized):
    code = "invalid_service_token"
    summary = "The shared service token is missing or wrong (Authorization: Bearer <service token>)"


class ServiceTokenMiddleware:
    """The shared service token (``<PREFIX>SERVICE_TOKEN``) as ``Authorization: Bearer``, required on
    every route but the probes and metrics, which the kubelet and Prometheus call without it.

    Only the embedder and the retriever use it: nothing but other services should call them, and
    without it the network (the chart's NetworkPolicies) is all that keeps a pod in the cluster from
    reading every collection or spending the embedder's capacity. Both sides are hashed before the
    compare, so the time taken says nothing about the token, its length included.
    """

    OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, *, token: SecretStr) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.get_secret_value().encode()).digest()

    def _allowed(self, header: bytes) -> bool:
        scheme, _, value = header.decode("latin-1").partition(" ")
        given = hashlib.sha256(value.strip().encode("latin-1")).digest()
        # The digest is compared even for a wrong scheme, so both paths cost the same.
        return hmac.compare_digest(given, self._digest) and scheme.lower() == "bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        if self._allowed(header):
            await self.app(scope, receive, send)
            return
        message = "this service needs the shared service token: Authorization: Bearer <service token>"
        body = dumps(error_body(InvalidServiceToken.code, message))
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(RequestBodyError):
    """Raised by the bounded ``receive`` once a body without Content-Length (chunked) passes the
    limit. A RequestBodyError, so that FastAPI's body parsing lets it through as a 413 instead of
    turning it into its 400 "There was an error parsing the body"."""

    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class CheckReport(BaseModel):
    ok: bool
    detail: str


class ReadinessReport(BaseModel):
    """What ``/readyz`` answers, ready (200) or not (503)."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, CheckReport]


def health_router(metrics: ServiceMetrics, readiness: Readiness) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # The models only document the answers: its 503 is the same report, not an error body.
    @router.get(
        "/readyz",
        summary="503 until every part the service needs is usable",
        response_model=ReadinessReport,
        responses={503: {"model": ReadinessReport, "description": "Not ready: the checks say which part"}},
    )
    async def readyz() -> Response:
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    # response_class only documents it: the schema says text/plain, not FastAPI's default JSON.
    @router.get("/metrics", summary="Prometheus text exposition", response_class=PlainTextResponse)
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
    require_service_token: bool = False,
) -> FastAPI:
    """A FastAPI app with omnirag's shared wiring. The service adds its routers and lifespan.

    ``require_service_token``: a service that only other services call (embedder, retriever) refuses
    requests without ``settings.service_token`` when one is set (see ServiceTokenMiddleware).

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
    token = settings.service_token if require_service_token else None
    document_errors(
        app,
        every_route=(InvalidServiceToken,) if token is not None else (),
        except_paths=ServiceTokenMiddleware.OPEN_PATHS,
    )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc.detail)), status_code=413)

    app.include_router(health_router(metrics, readiness))
    if token is not None:
        # Added before the observability middleware, so inside it: refusals are counted and logged.
        app.add_middleware(ServiceTokenMiddleware, token=token)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, settings=settings)
    app.add_middleware(SecurityHeadersMiddleware)  # added last, so outside the body limit: on its 413s too
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
