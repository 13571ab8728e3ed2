"""``python -m omnirag.indexer worker``: consume ingest requests from a Redis stream.

A consumer group shares the stream between workers. A request is acknowledged only after its
version is published. A failed one is queued again with its attempt count raised; after
``max_attempts`` it moves to the dead-letter stream, so one poisoned request never blocks the
next. A worker that dies holding a request leaves it pending; another worker claims it once it has
been idle for ``claim_idle_seconds``. Each job's status (queued, running, done, failed, dead, with
the version or the error) is a Redis hash readable by job id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path, PurePosixPath
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from omnirag.core.schemas.ingest import (
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    INGEST_STREAM,
    JOB_TTL_SECONDS,
    IngestRequest,
    job_key,
)
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.loaders import load_file
from omnirag.indexer.pipeline import ingest
from omnirag.indexer.types import SourceDocument

log = logging.getLogger("omnirag.indexer.worker")


class PermanentError(Exception):
    """A request that can never succeed (bad shape, a path outside the uploads directory)."""


async def set_status(r: Any, job_id: str, **fields: Any) -> None:
    key = job_key(job_id)
    mapping = {k: str(v) for k, v in fields.items() if v is not None} | {"updated_at": f"{time.time():.3f}"}
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, JOB_TTL_SECONDS)
        await pipe.execute()


def to_document(req: IngestRequest, uploads: Path, max_bytes: int) -> SourceDocument:
    if req.kind == "text":
        assert req.text is not None
        return SourceDocument(
            source=req.source,
            title=req.title or req.source,
            text=req.text,
            metadata={"content_type": "text/plain", "ingest_job": req.job_id},
        )
    assert req.path is not None
    root = uploads.resolve()
    path = (root / req.path).resolve()
    if not path.is_relative_to(root):
        raise PermanentError(f"path {req.path!r} is outside the uploads directory")
    if not path.is_file():
        raise PermanentError(f"uploaded file {req.path!r} does not exist")
    loaded = load_file(path, max_bytes=max_bytes)
    # The stored name is generated; a title that is only that name says nothing, the source's does.
    own_title = loaded.title if loaded.title and loaded.title != path.stem else None
    return SourceDocument(
        source=req.source,
        title=req.title or own_title or PurePosixPath(req.source).name,
        text=loaded.text,
        metadata={"content_type": loaded.content_type, "ingest_job": req.job_id},
    )


class Worker:
    def __init__(
        self,
        settings: IndexerSettings,
        *,
        uploads_dir: Path,
        max_attempts: int = 3,
        claim_idle_seconds: float = 300.0,
        block_ms: int = 2000,
    ) -> None:
        self.settings = settings
        self.uploads = uploads_dir
        self.max_attempts = max_attempts
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.block_ms = block_ms
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        # redis-py's stubs type stream replies loosely; treat the client as untyped here.
        self.redis: Any = aioredis.from_url(settings.redis_url)

    async def setup(self) -> None:
        try:
            await self.redis.xgroup_create(INGEST_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def close(self) -> None:
        await self.redis.aclose()

    async def next_message(self) -> tuple[bytes, dict[bytes, bytes]] | None:
        # First any request a dead worker left pending for too long, then new ones.
        claimed = await self.redis.xautoclaim(
            INGEST_STREAM,
            CONSUMER_GROUP,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=1,
        )
        if claimed and claimed[1]:
            msg_id, fields = claimed[1][0]
            return msg_id, fields
        got = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, {INGEST_STREAM: ">"}, count=1, block=self.block_ms
        )
        if not got:
            return None
        _, messages = got[0]
        msg_id, fields = messages[0]
        return msg_id, fields

    async def handle(self, msg_id: bytes, fields: dict[bytes, bytes]) -> None:
        raw = {k.decode(): v.decode() for k, v in fields.items()}
        job_id = raw.get("job_id", "unknown")
        try:
            req = IngestRequest.model_validate(raw)
        except ValidationError as exc:
            await self.dead(msg_id, raw, f"malformed request: {exc.errors()[0].get('msg')}")
            return
        await set_status(
            self.redis, job_id, status="running", attempts=req.attempts + 1, collection=req.collection
        )
        try:
            doc = await asyncio.to_thread(to_document, req, self.uploads, self.settings.max_file_bytes)
            summary = await ingest(req.collection, [doc], self.settings)
        except PermanentError as exc:
            await self.dead(msg_id, raw, str(exc))
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            log.warning(
                "ingest failed", extra={"job_id": job_id, "attempt": req.attempts + 1, "reason": reason}
            )
            if req.attempts + 1 >= self.max_attempts:
                await self.dead(msg_id, raw, reason)
                return
            retry = raw | {"attempts": str(req.attempts + 1)}
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(INGEST_STREAM, retry)
                pipe.xack(INGEST_STREAM, CONSUMER_GROUP, msg_id)
                pipe.xdel(INGEST_STREAM, msg_id)
                await pipe.execute()
            await set_status(self.redis, job_id, status="queued", error=reason, attempts=req.attempts + 1)
            return
        # Acknowledged only now that the version is published.
        await self.redis.xack(INGEST_STREAM, CONSUMER_GROUP, msg_id)
        await self.redis.xdel(INGEST_STREAM, msg_id)
        if req.kind == "file" and req.path and not self.settings.keep_uploads:
            # Only after the acknowledgement: a crash in between leaves a file, never a job without one.
            await asyncio.to_thread(self._remove_upload, req.path)
        await set_status(
            self.redis,
            job_id,
            status="done",
            version=summary.version,
            error="",
            chunks=summary.chunks_embedded,
        )
        log.info(
            "ingested", extra={"job_id": job_id, "collection": req.collection, "version": summary.version}
        )

    def _remove_upload(self, relative: str) -> None:
        root = self.uploads.resolve()
        path = (root / relative).resolve()
        if path.is_relative_to(root):  # to_document refused anything else before it got here
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # a read-only mount: the job is done all the same
                log.warning("cannot remove the ingested upload", extra={"path": relative, "reason": str(exc)})

    async def dead(self, msg_id: bytes, raw: dict[str, str], reason: str) -> None:
        job_id = raw.get("job_id", "unknown")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(DEAD_LETTER_STREAM, raw | {"error": reason[:2000]}, maxlen=100_000, approximate=True)
            pipe.xack(INGEST_STREAM, CONSUMER_GROUP, msg_id)
            pipe.xdel(INGEST_STREAM, msg_id)
            await pipe.execute()
        await set_status(self.redis, job_id, status="dead", error=reason[:2000])
        log.warning(
            "ingest request moved to the dead-letter stream", extra={"job_id": job_id, "reason": reason}
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.setup()
        beat = None
        if self.settings.heartbeat_file is not None:
            beat = asyncio.create_task(self._heartbeat(self.settings.heartbeat_file), name="heartbeat")
        try:
            while stop is None or not stop.is_set():
                message = await self.next_message()
                if message is not None:
                    await self.handle(*message)
        finally:
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    async def _heartbeat(self, path: Path) -> None:
        """Rewrite ``path`` with the time while the event loop runs and Redis answers PING. A stuck
        loop or a lost Redis lets the file age, and the liveness probe restarts the worker."""
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=5)
            except (aioredis.RedisError, OSError, TimeoutError) as exc:
                log.warning("heartbeat skipped: Redis does not answer", extra={"reason": str(exc)})
            else:
                # A few bytes to a local file, on the loop itself: a write still in flight on a
                # thread could land after the worker stopped and tell the probe it lives.
                _write_beat(path)
            await asyncio.sleep(self.settings.heartbeat_seconds)


def _write_beat(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{time.time():.3f}\n", encoding="utf-8")
    tmp.replace(path)  # a probe never reads a half-written file


async def run_worker(settings: IndexerSettings) -> int:
    if not settings.redis_url:
        print("error: the worker needs Redis: set INDEXER_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
        return 2
    worker = Worker(settings, uploads_dir=settings.uploads_dir)
    try:
        await worker.run()
    finally:
        await worker.close()
    return 0
