"""``GET /v1/models`` (OpenAI list) and ``GET /v1/info`` (what callers must match)."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Request

from omnirag.core.schemas.embeddings import EmbedderInfo, ModelCard, ModelList, Precision
from omnirag.embedder.deps import get_service
from omnirag.embedder.service import EmbedService

router = APIRouter(prefix="/v1", tags=["models"])
Service = Annotated[EmbedService, Depends(get_service)]


@router.get("/models", response_model=ModelList)
async def models(request: Request, service: Service) -> ModelList:
    return ModelList(data=[ModelCard(id=service.model.name, created=request.app.state.started_at)])


@router.get("/info", response_model=EmbedderInfo)
async def info(service: Service) -> EmbedderInfo:
    m = service.model
    return EmbedderInfo(
        model=m.name,
        dimension=m.dimension,
        max_seq_length=m.max_seq_length,
        languages=m.languages,
        normalized=m.normalized,
        prompts=m.prompts,
        precisions=list(get_args(Precision)),
        max_inputs_per_request=service.settings.max_inputs_per_request,
        device=m.device,
    )
