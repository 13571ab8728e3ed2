"""Dependencies: the routes reach the service created in the lifespan through these."""

from __future__ import annotations

from fastapi import Request

from omnirag.core.errors import NotReady, raises
from omnirag.embedder.service import EmbedService


@raises(NotReady)
async def get_service(request: Request) -> EmbedService:
    # async: FastAPI would run a plain function in its thread pool, a thread hop per request.
    service: EmbedService | None = getattr(request.app.state, "service", None)
    if service is None:
        error = getattr(request.app.state, "load_error", None)
        raise NotReady(
            f"the model failed to load: {error}" if error else "the model is still loading",
            code="model_failed" if error else "model_loading",
        )
    return service
