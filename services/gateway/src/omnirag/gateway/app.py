"""``create_app(settings)``: the gateway's FastAPI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
import redis.asyncio as aioredis
from fastapi import FastAPI

from omnirag.core.app import create_service_app
from omnirag.core.clients.embedder import EmbedderClient
from omnirag.core.health import Check
from omnirag.extract import OCR
from omnirag.gateway.api import admin, chat, documents, feedback, ingest, models, sessions
from omnirag.gateway.api.admin import without_credentials
from omnirag.gateway.auth import KeyStore, RateLimiter
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.deps import install_unavailable_handlers, upstream_mounts
from omnirag.gateway.llm import PassThrough, create_chat_model, create_passthrough_session
from omnirag.gateway.memory import History
from omnirag.gateway.metrics import GatewayMetrics
from omnirag.gateway.registry import ModelRegistry
from omnirag.gateway.state import GatewayState

log = logging.getLogger("omnirag.gateway")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    # Built before the app: a bad model list stops the start with its reason, not the first request.
    registry = ModelRegistry.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics(app.state.metrics)
        keys = KeyStore.load(
            inline=settings.api_keys,
            path=settings.api_keys_file,
            dev_key=settings.dev_key.get_secret_value() if settings.dev_key else None,
            default_rpm=settings.default_rpm,
            default_tpm=settings.default_tpm,
        )
        if settings.auth_enabled and not keys.keys:
            raise RuntimeError(
                "no API keys configured: set GATEWAY_API_KEYS, GATEWAY_API_KEYS_FILE or GATEWAY_DEV_KEY "
                "(or GATEWAY_AUTH_ENABLED=false on a private machine)"
            )
        redis = aioredis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            decode_responses=True,
        )
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        # Only the embedder and the retriever are called through it: they get the service token.
        http = httpx.AsyncClient(
            timeout=settings.upstream_timeout,
            limits=limits,
            headers=settings.service_headers(),
            mounts=upstream_mounts(settings, metrics, limits),
        )
        # ChatOpenAI needs an httpx client: the openai SDK's own on aiohttp's connections
        # (openai[aiohttp]), 0.4-0.5 ms of CPU per LLM call against httpx's 0.8-2 ms (see llm.py).
        llm_http = openai.DefaultAioHttpClient(
            timeout=httpx.Timeout(settings.llm_timeout, connect=5.0), limits=limits, follow_redirects=False
        )
        llm_session = create_passthrough_session(settings)
        gw = GatewayState(
            settings=settings,
            metrics=metrics,
            keys=keys,
            redis=redis,
            history=History(
                redis,
                max_turns=settings.history_max_turns,
                ttl_seconds=settings.history_ttl_seconds,
                cache_size=settings.session_cache_size,
            ),
            limiter=RateLimiter(redis, on_limited=lambda limit: metrics.rate_limited.labels(limit).inc()),
            http=http,
            llm_http=llm_http,
            registry=registry,
            chat_models={
                m.name: create_chat_model(settings, m, http_async_client=llm_http) for m in registry.models
            },
            passthroughs={m.name: PassThrough(settings, llm_session, m) for m in registry.models},
            ocr=OCR(),
            embedder=EmbedderClient(
                settings.embedder_url, timeout=settings.upstream_timeout, async_client=http
            ),
        )
        app.state.gateway = gw
        log.info("chat models", extra={"models": registry.describe()})
        readiness = app.state.readiness

        # /readyz is public: each probe's detail is a state; URLs and errors go in its info, which
        # only the log and the admin view (GET /v1/admin/status) show.
        async def llm_probe() -> Check:
            # The default model: what a request naming none gets. The others show in the admin view.
            default = registry.default
            info = f"{default.name} at {without_credentials(default.base_url)}"
            try:
                r = await llm_http.get(default.base_url.rstrip("/") + "/models", timeout=2.0)
            except Exception as exc:
                return Check(False, "down", f"{info}: {type(exc).__name__}: {exc}")
            ok = r.status_code < 400
            return Check(ok, "ok" if ok else f"not ready ({r.status_code})", f"{info} ({r.status_code})")

        async def optional(name: str, url: str) -> Check:
            # The gateway answers without these (degraded), so they never hold readiness back.
            try:
                r = await http.get(url, timeout=1.5)
            except Exception as exc:
                return Check(True, "down; answers are degraded", f"{url}: {type(exc).__name__}: {exc}")
            if r.status_code < 400:
                return Check(True, "ok", url)
            return Check(True, f"not ready ({r.status_code}); answers are degraded", f"{url}: {r.text[:500]}")

        async def redis_probe() -> Check:
            try:
                await redis.ping()
                return Check(True, "ok")
            except Exception as exc:
                return Check(True, "down; no history, no rate limits", f"{type(exc).__name__}: {exc}")

        readiness.add_probe("llm", llm_probe)
        readiness.add_probe(
            "retriever", lambda: optional("retriever", settings.retriever_url.rstrip("/") + "/readyz")
        )
        readiness.add_probe(
            "embedder", lambda: optional("embedder", settings.embedder_url.rstrip("/") + "/readyz")
        )
        readiness.add_probe("redis", redis_probe)
        try:
            yield
        finally:
            await http.aclose()
            await llm_http.aclose()
            await llm_session.close()
            await redis.aclose()
            gw.ocr.close()

    app = create_service_app(
        "gateway",
        settings,
        lifespan=lifespan,
        title="omnirag gateway",
        description="OpenAI-compatible RAG chat over the team's documents.",
    )
    for module in (chat, models, sessions, ingest, documents, feedback, admin):
        app.include_router(module.router)
    install_unavailable_handlers(app)
    return app
