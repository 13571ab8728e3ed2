"""``GET /v1/models`` (OpenAI list) and ``GET /v1/info`` (what callers must match)."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Request

from omnirag.core.schemas.embeddings import ModelCard, ModelList, Precision
from omnirag.embedder.deps import get_service
from omnirag.embedder.schemas import EmbedderInfoWithQuantization, QuantizationInfo
from omnirag.embedder.service import EmbedService

router = APIRouter(prefix="/v1", tags=["models"])
Service = Annotated[EmbedService, Depends(get_service)]


@router.get("/models", response_model=ModelList)
async def models(request: Request, service: Service) -> ModelList:
    return ModelList(data=[ModelCard(id=service.model.name, created=request.app.state.started_at)])


@router.get("/info", response_model=EmbedderInfoWithQuantization)
async def info(service: Service) -> EmbedderInfoWithQuantization:
    m = service.model
    cal = service.calibration
    quantization = None
    if cal is not None:
        quantization = QuantizationInfo(
            method="fixed-calibration",
            calibration_texts=cal.texts,
            calibration_sha256=cal.sha256,
            ranges=cal.ranges(None, False).tolist(),
            normalized_ranges=cal.ranges(None, True).tolist(),
        )
    return EmbedderInfoWithQuantization(
        model=m.name,
        dimension=m.dimension,
        max_seq_length=m.max_seq_length,
        languages=m.languages,
        normalized=m.normalized,
        prompts=m.prompts,
        precisions=list(get_args(Precision)),
        max_inputs_per_request=service.settings.max_inputs_per_request,
        device=m.device,
        quantization=quantization,
    )
