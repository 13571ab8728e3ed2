"""``POST /v1/embeddings`` (OpenAI) and ``POST /v1/embed`` (the full encode surface)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from sentence_transformers import quantize_embeddings

from omnirag.core.responses import JSONResponse
from omnirag.core.routing import OrjsonRoute
from omnirag.core.schemas.embeddings import EmbeddingsRequest, EmbeddingsResponse, EmbedRequest, EmbedResponse
from omnirag.embedder.deps import get_service
from omnirag.embedder.service import EmbedService, postprocess

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=OrjsonRoute)
Service = Annotated[EmbedService, Depends(get_service)]


@router.post("/embeddings", response_model=EmbeddingsResponse, summary="OpenAI-compatible embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request, service: Service) -> JSONResponse:
    service.check_model(body.model)
    service.check_dimension(body.dimensions, "dimensions")
    encoded = await service.encode(request, body.texts())
    vectors = np.stack(encoded.results)
    if body.dimensions is not None:
        vectors = postprocess(vectors, truncate_dim=body.dimensions, normalize=True)
    if body.encoding_format == "base64":
        # OpenAI's encoding: little-endian float32 bytes, base64. The openai client asks for it.
        le = vectors.astype("<f4", copy=False)
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(le)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": service.model.name,
            "usage": {"prompt_tokens": encoded.tokens, "total_tokens": encoded.tokens},
        }
    )


@router.post(
    "/embed",
    response_model=EmbedResponse,
    response_model_exclude_none=True,
    summary="SentenceTransformer.encode over HTTP: precision, truncate_dim, prompts, tokens",
)
async def embed(body: EmbedRequest, request: Request, service: Service) -> JSONResponse:
    service.check_dimension(body.truncate_dim, "truncate_dim")
    prompt = service.resolve_prompt(body.prompt, body.prompt_name)
    encoded = await service.encode(request, body.texts(), prompt=prompt, output_value=body.output_value)
    dim = body.truncate_dim or service.model.dimension
    usage = {"prompt_tokens": encoded.tokens, "total_tokens": encoded.tokens}
    if body.output_value == "token_embeddings":
        items = [
            {
                "tokens": out.tokens,
                "embeddings": postprocess(
                    out.embeddings, truncate_dim=body.truncate_dim, normalize=body.normalize
                ),
            }
            for out in encoded.results
        ]
        return JSONResponse(
            {
                "model": service.model.name,
                "dimension": dim,
                "precision": "float32",
                "normalized": body.normalize,
                "token_embeddings": items,
                "usage": usage,
            }
        )
    vectors: Any = postprocess(
        np.stack(encoded.results), truncate_dim=body.truncate_dim, normalize=body.normalize
    )
    if body.precision != "float32":
        # Per request, like one encode() call: int8/uint8 ranges come from these vectors.
        vectors = quantize_embeddings(vectors, precision=body.precision)
    return JSONResponse(
        {
            "model": service.model.name,
            "dimension": dim,
            "precision": body.precision,
            "normalized": body.normalize or (service.model.normalized and not body.truncate_dim),
            "embeddings": vectors,
            "usage": usage,
        }
    )
