"""``POST /v1/embeddings`` (OpenAI) and ``POST /v1/embed`` (the full encode surface)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from sentence_transformers import quantize_embeddings
from starlette.responses import Response

from omnirag.core.errors import NotFound, Overloaded, PayloadTooLarge, raises
from omnirag.core.responses import JSONResponse
from omnirag.core.routing import OrjsonRoute
from omnirag.core.schemas.embeddings import EmbeddingsRequest, EmbeddingsResponse
from omnirag.embedder.calibration import quantize
from omnirag.embedder.deps import get_service
from omnirag.embedder.schemas import EmbedRequestWithRanges, EmbedResponseWithRanges
from omnirag.embedder.service import EmbedService, Encoded, postprocess

# Where a request's time went, in milliseconds, on every answer: the queue (admission until its first
# text started a pass), the forward passes that computed its texts, and the whole (the body read to
# the answer ready). The rest of the whole is reading, tokenizing, waiting between passes, encoding.
QUEUE_TIME = "X-Queue-Time-Ms"
INFERENCE_TIME = "X-Inference-Time-Ms"
TOTAL_TIME = "X-Total-Time-Ms"
_MS = {"schema": {"type": "number", "minimum": 0}}
TIMING: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            QUEUE_TIME: {"description": "Milliseconds the request waited in the batching queue.", **_MS},
            INFERENCE_TIME: {"description": "Milliseconds of forward passes that computed its texts.", **_MS},
            TOTAL_TIME: {"description": "Milliseconds from reading the request to the answer ready.", **_MS},
        }
    }
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _timed(response: Response, encoded: Encoded) -> Response:
    response.headers[QUEUE_TIME] = _ms(encoded.queue_seconds)
    response.headers[INFERENCE_TIME] = _ms(encoded.inference_seconds)
    return response


class AdmissionRoute(OrjsonRoute):
    """Checks the queue before FastAPI reads, parses and validates the body (after the middleware, so
    authentication and metrics still see every request): a request that could not be admitted with a
    single text is answered 429 without paying for its body. Its answer says how long it all took."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admitted_first(request: Request) -> Response:
            started = time.perf_counter()
            service: EmbedService | None = getattr(request.app.state, "service", None)
            if service is not None:
                service.precheck()
            response = await handler(request)
            response.headers[TOTAL_TIME] = _ms(time.perf_counter() - started)
            return response

        return admitted_first


router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=AdmissionRoute)
Service = Annotated[EmbedService, Depends(get_service)]


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    summary="OpenAI-compatible embeddings",
    responses=TIMING,
)
@raises(Overloaded, PayloadTooLarge, NotFound)
async def embeddings(body: EmbeddingsRequest, request: Request, service: Service) -> Response:
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
    return _timed(
        JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": service.model.name,
                "usage": {"prompt_tokens": encoded.tokens, "total_tokens": encoded.tokens},
            }
        ),
        encoded,
    )


@router.post(
    "/embed",
    response_model=EmbedResponseWithRanges,
    response_model_exclude_none=True,
    summary="SentenceTransformer.encode over HTTP: precision, truncate_dim, prompts, tokens",
    responses=TIMING,
)
@raises(Overloaded, PayloadTooLarge)
async def embed(body: EmbedRequestWithRanges, request: Request, service: Service) -> Response:
    service.check_dimension(body.truncate_dim, "truncate_dim")
    prompt = service.resolve_prompt(body.prompt, body.prompt_name)
    ranges = None
    if body.precision in ("int8", "uint8"):
        # Checked before the texts are queued: a bad `ranges` costs no inference.
        ranges = service.quantization_ranges(body.ranges, body.truncate_dim, body.normalize)
    encoded = await service.encode(
        request,
        body.texts(),
        prompt=prompt,
        output_value=body.output_value,
        exact=ranges is not None and service.settings.exact_quantization,
    )
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
        return _timed(
            JSONResponse(
                {
                    "model": service.model.name,
                    "dimension": dim,
                    "precision": "float32",
                    "normalized": body.normalize,
                    "token_embeddings": items,
                    "usage": usage,
                }
            ),
            encoded,
        )
    vectors: Any = postprocess(
        np.stack(encoded.results), truncate_dim=body.truncate_dim, normalize=body.normalize
    )
    if ranges is not None:
        # Fixed ranges, never these vectors' own min and max: a text's bytes are the same whatever else
        # is in its request (and a one-text request has a step).
        vectors = quantize(vectors, body.precision, ranges)
    elif body.precision != "float32":
        vectors = quantize_embeddings(vectors, precision=body.precision)  # binary: no ranges involved
    payload: dict[str, Any] = {
        "model": service.model.name,
        "dimension": dim,
        "precision": body.precision,
        "normalized": body.normalize or (service.model.normalized and not body.truncate_dim),
        "embeddings": vectors,
        "usage": usage,
    }
    if ranges is not None:
        payload["ranges"] = ranges
    return _timed(JSONResponse(payload), encoded)
