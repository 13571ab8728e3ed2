"""``create_app(settings)``: the embedder's FastAPI app. The model loads in the lifespan, off the
event loop, so ``/healthz`` answers at once and ``/readyz`` says ``model: loading`` until it is up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from omnirag.core.app import create_service_app
from omnirag.embedder.api import embeddings, models
from omnirag.embedder.config import EmbedderSettings
from omnirag.embedder.model import EmbeddingModel
from omnirag.embedder.service import EmbedderMetrics, EmbedService, calibrate

log = logging.getLogger("omnirag.embedder")


def create_app(settings: EmbedderSettings | None = None) -> FastAPI:
    settings = settings or EmbedderSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.started_at = int(time.time())
        readiness = app.state.readiness
        readiness.set("model", False, "loading")
        metrics = EmbedderMetrics(app.state.metrics)

        async def load() -> None:
            try:
                model = await asyncio.to_thread(
                    EmbeddingModel,
                    settings.resolved_model_path(),
                    settings.resolved_model_name(),
                    settings.device,
                    settings.torch_threads,
                    settings.languages,
                    settings.max_chars_per_input,
                )
                overhead = None
                if settings.pass_overhead_tokens is None:
                    overhead = await asyncio.to_thread(model.calibrate_pass_overhead)
                # int8 / uint8 ranges, once per model: quantized bytes must not depend on the request.
                calibration = await asyncio.to_thread(calibrate, model, settings.max_batch_size)
                service = EmbedService(
                    model, settings, metrics, pass_overhead_tokens=overhead, calibration=calibration
                )
                await service.start()
                app.state.service = service
                readiness.set("model", True)
            except Exception as exc:
                log.exception("model failed to load")
                app.state.load_error = f"{type(exc).__name__}: {exc}"
                # The public detail names the model, not its path; the error is in the log above.
                readiness.set(
                    "model",
                    False,
                    f"failed to load {settings.resolved_model_name()}",
                    info=app.state.load_error,
                )

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            loader.cancel()
            service = getattr(app.state, "service", None)
            if service is not None:
                await service.stop()

    app = create_service_app(
        "embedder",
        settings,
        lifespan=lifespan,
        title="omnirag embedder",
        description="SentenceTransformer embeddings behind a dynamic batching queue.",
        require_service_token=True,
    )
    app.include_router(embeddings.router)
    app.include_router(models.router)
    return app
