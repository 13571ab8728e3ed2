"""``POST /v1/collections/{name}/documents`` and ``GET /v1/ingest/{job_id}``: on-demand ingestion.

An upload, a multipart ``file`` (read as it streams, see :mod:`omnirag.gateway.uploads`) or JSON
text, is written to the shared uploads directory, then queued for the indexer worker
(:mod:`omnirag.gateway.ingest_queue`); the answer is 202 with the job id, whose status this
router serves.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from python_multipart.multipart import parse_options_header
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from omnirag.core.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    raises,
)
from omnirag.core.names import InvalidCollectionName, check_collection_name
from omnirag.core.responses import JSONResponse
from omnirag.core.schemas.ingest import JOB_TTL_SECONDS, IngestRequest, job_key
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.ingest_queue import accepted, check_room, ingest_request, queue, request_error
from omnirag.gateway.replies import text_fields
from omnirag.gateway.state import GatewayState
from omnirag.gateway.uploads import FILE_FIELD, FORM_OVERHEAD_BYTES, MultipartUpload, normalized_types

router = APIRouter(tags=["ingest"])


def _constraint(field: str, attr: str) -> Any:
    """A constraint of an ``IngestRequest`` field, so that the gateway refuses exactly what the
    worker would refuse, with a clear 4xx instead of a dead-lettered job."""
    for meta in IngestRequest.model_fields[field].metadata:
        value = getattr(meta, attr, None)
        if value is not None:
            return value
    raise LookupError(f"IngestRequest.{field} has no {attr}")


JOB_ID = re.compile(_constraint("job_id", "pattern"))
MAX_TEXT_CHARS: int = _constraint("text", "max_length")
MAX_SOURCE_CHARS: int = _constraint("source", "max_length")


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidInput(
            "job ids are 8-64 characters of letters, digits, '_' and '-'", code="invalid_job_id"
        )
    return job_id


class TextDocument(BaseModel):
    """The JSON form of an upload: text that has no file."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    source: str | None = Field(None, max_length=MAX_SOURCE_CHARS)
    title: str | None = Field(None, max_length=1024)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


async def _upload_file(
    request: Request, gw: GatewayState, collection: str, job_id: str, boundary: bytes
) -> IngestRequest:
    settings = gw.settings
    limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(
            f"the upload exceeds the limit of {settings.max_upload_bytes} bytes", code="file_too_large"
        )
    uploads = Path(settings.uploads_dir)
    upload = MultipartUpload(
        boundary=boundary,
        directory=uploads / collection,
        stem=job_id,
        types=normalized_types(settings.upload_types),
        max_bytes=settings.max_upload_bytes,
    )
    await upload.receive(request.stream(), limit)
    try:
        if upload.filename is None:
            raise InvalidInput(
                f"no file: send the document as the {FILE_FIELD!r} field (curl -F {FILE_FIELD}=@notes.md)",
                code="missing_file",
            )
        if upload.size == 0 or upload.path is None:
            raise InvalidInput(f"the file {upload.filename!r} is empty", code="empty_file")
        source = upload.fields.get("source", "").strip() or f"upload/{upload.filename}"
        # No title given: the indexer takes the document's own (a Markdown heading, an HTML
        # <title>) and falls back to the file name.
        title = upload.fields.get("title", "").strip() or None
        return ingest_request(
            job_id=job_id,
            collection=collection,
            kind="file",
            source=source,
            title=title,
            path=upload.path.relative_to(uploads).as_posix(),
        )
    except BaseException:
        await run_in_threadpool(upload.discard)
        raise


async def _upload_text(request: Request, collection: str, job_id: str) -> IngestRequest:
    # The shared middleware bounds the body at max_body_bytes; the text must be held anyway,
    # since it travels in the queued request.
    body = await request.body()
    try:
        doc = TextDocument.model_validate_json(body)
    except ValidationError as exc:
        raise request_error(exc, "body") from None
    return ingest_request(
        job_id=job_id,
        collection=collection,
        kind="text",
        source=(doc.source or "").strip() or f"text/{job_id}",
        title=(doc.title or "").strip() or None,
        text=doc.text,
    )


@router.post(
    "/v1/collections/{name}/documents",
    status_code=202,
    summary="Queue a document for indexing: a multipart 'file' upload or JSON {text, source, title}",
)
@raises(InvalidCollectionName, Forbidden, PayloadTooLarge, Overloaded, NotReady)  # NotReady: Redis, disk
async def upload_document(name: str, request: Request, key: Key, gw: Gateway) -> JSONResponse:
    check_collection_name(name)
    key.check_collection(name)
    job_id = uuid.uuid4().hex
    await check_room(gw)
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    media = media_type.decode("latin-1").lower()
    if media == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise InvalidInput("multipart body without a boundary", code="invalid_multipart")
        req = await _upload_file(request, gw, name, job_id, boundary)
    elif media == "application/json" or media.endswith("+json"):
        req = await _upload_text(request, name, job_id)
    else:
        raise HTTPException(
            415,
            detail="send multipart/form-data with a 'file' part, or application/json with {'text': ...}",
        )
    try:
        # Who uploaded it goes with every chunk: it scopes the listing and decides who may delete it.
        req = ingest_request(
            **(req.model_dump() | {"origin_key": key.name, "origin_principal": key.principal})
        )
        await queue(gw, req)
    except BaseException:
        if req.path:
            stored = Path(gw.settings.uploads_dir) / req.path
            await run_in_threadpool(stored.unlink, missing_ok=True)
        raise
    gw.metrics.ingest_jobs.labels(req.kind).inc()
    return accepted(req)


def _number(value: str | None, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        return None


@router.get("/v1/ingest/{job_id}", summary="An ingest job's status: queued, running, done, failed or dead")
@raises(NotFound, Forbidden, NotReady)
async def get_job(job_id: str, key: Key, gw: Gateway) -> JSONResponse:
    check_job_id(job_id)
    try:
        job = text_fields(await gw.redis.hgetall(job_key(job_id)))
    except (RedisError, OSError) as exc:
        raise NotReady(
            f"job status is unavailable: Redis is down ({type(exc).__name__})",
            code="ingest_queue_unavailable",
        ) from None
    collection = job.get("collection")
    if not job or not collection:
        raise NotFound(
            f"no ingest job {job_id!r} (jobs are kept {JOB_TTL_SECONDS // 86400} days)", code="job_not_found"
        )
    key.check_collection(collection)
    return JSONResponse(
        {
            "job_id": job_id,
            "status": job.get("status"),
            "collection": collection,
            "source": job.get("source") or None,
            "version": job.get("version") or None,
            "chunks": _number(job.get("chunks"), int),
            "error": job.get("error") or None,
            "updated_at": _number(job.get("updated_at"), float),
        }
    )
