"""The ingest queue in Redis, which the indexer worker (``omnirag.indexer.worker``) consumes: a job's
status and its request are queued in one transaction, so a worker never sees a request without a
status nor a status without a request. Uploads and deletes are queued alike; the answer is 202 with
the job id, and the worker moves the status on (running, done with the version, failed, dead)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from omnirag.core.errors import NotReady, Overloaded
from omnirag.core.responses import JSONResponse
from omnirag.core.schemas.ingest import INGEST_STREAM, JOB_TTL_SECONDS, IngestRequest, job_key

if TYPE_CHECKING:
    from omnirag.gateway.state import GatewayState


def request_error(exc: ValidationError, where: str) -> RequestValidationError:
    """A validation error as FastAPI's own (422 with the fields at fault under ``where``)."""
    errors = [
        {"loc": [where, *e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
    ]
    return RequestValidationError(errors)


def ingest_request(**fields: Any) -> IngestRequest:
    """The queued request, refused here with a 422 as the worker would refuse it."""
    try:
        return IngestRequest(**fields)
    except ValidationError as exc:
        raise request_error(exc, "body") from None


async def check_room(gw: GatewayState) -> None:
    """Refuse before the body is read when the worker is this far behind (or not running): the jobs
    already queued are kept, none is dropped to make room. Concurrent uploads may pass the check
    together, so the bound holds to within the uploads in flight."""
    try:
        waiting = await gw.redis.xlen(INGEST_STREAM)
    except (RedisError, OSError) as exc:
        raise NotReady(
            f"the ingest queue (Redis) is unavailable ({type(exc).__name__}); nothing was queued, try again",
            code="ingest_queue_unavailable",
        ) from None
    limit = gw.settings.max_queued_ingests
    if waiting >= limit:
        raise Overloaded(
            f"{waiting} documents are waiting for the indexer (the limit is {limit}); try again later",
            retry_after=60,
            code="ingest_queue_full",
        )


async def queue(gw: GatewayState, req: IngestRequest) -> None:
    """The job's status and its request, both or neither."""
    now = f"{time.time():.3f}"
    status: dict[FieldT, EncodableT] = {
        "status": "queued",
        "collection": req.collection,
        "source": req.source,
        "kind": req.kind,
        "created_at": now,
        "updated_at": now,
    }
    message: dict[FieldT, EncodableT] = {k: str(v) for k, v in req.model_dump(exclude_none=True).items()}
    key = job_key(req.job_id)
    try:
        async with gw.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=status)
            pipe.expire(key, JOB_TTL_SECONDS)
            pipe.xadd(INGEST_STREAM, message)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        raise NotReady(
            f"the ingest queue (Redis) is unavailable ({type(exc).__name__}); nothing was queued, try again",
            code="ingest_queue_unavailable",
        ) from None


def accepted(req: IngestRequest) -> JSONResponse:
    """The 202 for a queued job: its id, and where its status is."""
    status_url = f"/v1/ingest/{req.job_id}"
    return JSONResponse(
        {
            "job_id": req.job_id,
            "status": "queued",
            "collection": req.collection,
            "source": req.source,
            "status_url": status_url,
        },
        status_code=202,
        headers={"Location": status_url},
    )
