"""``POST /v1/collections/{name}/documents`` and ``GET /v1/ingest/{job_id}``: on-demand ingestion.

An upload is written to the shared uploads directory, then its job status and its ingest request
are queued in one Redis transaction for the indexer worker (``omnirag.indexer.worker``), so a
worker never sees a request without a status nor a status without a request. The answer is 202
with the job id; the worker moves the status on (running, done with the version, failed, dead).

A multipart body is parsed here as it streams in: the file part goes straight to its final place
on disk, one received chunk at a time, and counts against ``max_upload_bytes`` as it arrives.
Starlette's ``request.form()`` would spool the whole file to a temporary file first and only then
let us look at its size or its name.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT
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
from omnirag.core.schemas.ingest import INGEST_STREAM, JOB_TTL_SECONDS, IngestRequest, job_key
from omnirag.gateway.deps import Gateway, Key
from omnirag.gateway.replies import text_fields
from omnirag.gateway.state import GatewayState

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

FILE_FIELD = "file"
MAX_FIELDS = 8  # text fields beside the file (source, title; a few unknown ones are ignored)
MAX_FIELD_BYTES = 8 * 1024  # a 1024-character source or title is at most 4 KiB of UTF-8
# Boundaries, part headers and the bounded fields: what a body may carry beyond the file itself.
FORM_OVERHEAD_BYTES = 256 * 1024
MAX_FILENAME_CHARS = 200
DIR_MODE = 0o750
FILE_MODE = 0o640


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidInput(
            "job ids are 8-64 characters of letters, digits, '_' and '-'", code="invalid_job_id"
        )
    return job_id


def sanitize_filename(raw: str) -> str:
    """The client's file name, safe to show and to use as a source name (never as a path)."""
    name = re.split(r"[/\\]", raw)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = " ".join(name.split()).strip(". ")
    if len(name) > MAX_FILENAME_CHARS:
        stem, ext = os.path.splitext(name)
        ext = ext if len(ext) <= 16 else ""
        name = stem[: MAX_FILENAME_CHARS - len(ext)] + ext
    return name or "document"


def normalized_types(types: list[str]) -> frozenset[str]:
    return frozenset(t.lower() if t.startswith(".") else "." + t.lower() for t in types)


def unsupported_type(filename: str, allowed: frozenset[str]) -> HTTPException:
    # 415 through Starlette's HTTPException: the shared error handler renders it in the house
    # shape with the stable code "unsupported_media_type".
    return HTTPException(
        415,
        detail=f"cannot ingest {filename!r}: accepted file types are {', '.join(sorted(allowed))}",
    )


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


def _filename_star(disposition: bytes) -> str | None:
    """RFC 5987 ``filename*=UTF-8''...``, which python-multipart does not decode."""
    m = re.search(rb"filename\*\s*=\s*([^;]+)", disposition, re.IGNORECASE)
    if not m:
        return None
    charset, _, rest = m.group(1).strip().strip(b'"').decode("latin-1").partition("'")
    _, _, value = rest.partition("'")
    try:
        return unquote(value, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


class MultipartUpload:
    """One multipart body, parsed as it streams: the ``file`` part straight to ``directory``
    under ``<stem><ext>``, the small text fields in memory, everything bounded."""

    def __init__(
        self, *, boundary: bytes, directory: Path, stem: str, types: frozenset[str], max_bytes: int
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.types = types
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self._fd: int | None = None
        self._open_wanted = False
        self._ext = ""
        self._pending: list[bytes] = []
        self._in_file = False
        self._ended = False
        self._field_count = 0
        self._disposition = b""
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # --- parser callbacks (synchronous, no I/O: file data is queued for the next flush) ---

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._value = bytearray()
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidInput("a multipart part has no name", code="invalid_multipart")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename: str | None = None
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
        elif b"filename*" in self._disposition.lower():
            filename = _filename_star(self._disposition) or ""
        if filename is None:
            self._field_count += 1
            if self._field_count > MAX_FIELDS:
                raise InvalidInput(f"more than {MAX_FIELDS} form fields", code="too_many_fields")
            return
        if self._name != FILE_FIELD:
            raise InvalidInput(
                f"unexpected file field {self._name!r}: send the document as the {FILE_FIELD!r} field",
                code="unexpected_file_field",
            )
        if self.filename is not None:
            raise InvalidInput("send one file per request", code="too_many_files")
        self.filename = sanitize_filename(filename)
        ext = Path(self.filename).suffix.lower()
        if ext not in self.types:
            raise unsupported_type(self.filename, self.types)
        self._ext = ext
        self._in_file = True
        self._open_wanted = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the file exceeds the upload limit of {self.max_bytes} bytes", code="file_too_large"
                )
            self._pending.append(data[start:end])
            return
        if len(self._value) + (end - start) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"form field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes", code="field_too_large"
            )
        self._value += data[start:end]

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            return
        if self._name == FILE_FIELD:
            raise InvalidInput(
                f"the {FILE_FIELD!r} field must be a file upload (curl -F {FILE_FIELD}=@notes.md)",
                code="missing_file",
            )
        try:
            self.fields.setdefault(self._name, self._value.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"form field {self._name!r} is not UTF-8", code="invalid_multipart") from None

    def _on_end(self) -> None:
        self._ended = True

    # --- blocking file work, run in a worker thread ---

    def _flush(self) -> None:
        if self._open_wanted:
            self._open_wanted = False
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            path = self.directory / f"{self.stem}{self._ext}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            self._fd = os.open(path, flags, FILE_MODE)
            self.path = path
        pending, self._pending = self._pending, []
        if pending:
            assert self._fd is not None
            for piece in pending:
                view = memoryview(piece)
                while view:
                    view = view[os.write(self._fd, view) :]

    def _finish(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                # On disk before the request is queued: the worker may read it on another node.
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        self._pending = []
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    async def receive(self, stream: AsyncIterator[bytes], limit: int) -> None:
        """Read the whole body; on any failure nothing is left on disk."""
        seen = 0
        try:
            async for chunk in stream:
                seen += len(chunk)
                if seen > limit:
                    raise PayloadTooLarge(
                        f"the upload exceeds the limit of {self.max_bytes} bytes", code="file_too_large"
                    )
                self._parser.write(chunk)
                if self._open_wanted or self._pending:
                    await self._disk(self._flush)
            self._parser.finalize()
            if not self._ended:
                raise InvalidInput("the multipart body ended early", code="invalid_multipart")
            await self._disk(self._finish)
        except FormParserError:
            await run_in_threadpool(self.discard)
            raise InvalidInput("malformed multipart body", code="invalid_multipart") from None
        except BaseException:
            await run_in_threadpool(self.discard)
            raise

    @staticmethod
    async def _disk(work: Callable[[], None]) -> None:
        try:
            await run_in_threadpool(work)
        except OSError as exc:
            # A full or read-only volume is the server's trouble, and usually passes.
            raise NotReady(
                f"cannot store the upload: {exc.strerror or type(exc).__name__}",
                code="upload_storage_unavailable",
            ) from None


def _validation_error(exc: ValidationError, where: str) -> RequestValidationError:
    errors = [
        {"loc": [where, *e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
    ]
    return RequestValidationError(errors)


def _ingest_request(**fields: Any) -> IngestRequest:
    try:
        return IngestRequest(**fields)
    except ValidationError as exc:
        raise _validation_error(exc, "body") from None


async def _check_room(gw: GatewayState) -> None:
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


async def _queue(gw: GatewayState, req: IngestRequest) -> None:
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


def _accepted(req: IngestRequest) -> JSONResponse:
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
        return _ingest_request(
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
        raise _validation_error(exc, "body") from None
    return _ingest_request(
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
    await _check_room(gw)
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
        req = _ingest_request(
            **(req.model_dump() | {"origin_key": key.name, "origin_principal": key.principal})
        )
        await _queue(gw, req)
    except BaseException:
        if req.path:
            stored = Path(gw.settings.uploads_dir) / req.path
            await run_in_threadpool(stored.unlink, missing_ok=True)
        raise
    gw.metrics.ingest_jobs.labels(req.kind).inc()
    return _accepted(req)


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
