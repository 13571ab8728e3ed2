"""``python -m omnirag.indexer worker``: consume ingest requests from a Redis stream.

A consumer group shares the stream between workers. A request is acknowledged only after its
version is published.

Failures are of three kinds, each bounded:

* Permanent: the request or its file can never succeed (bad shape, a path outside the uploads
  directory, a corrupt or encrypted file, an image without text, a decompression bomb). It moves to
  the dead-letter stream at once, its job ``dead`` with the reason.
* Transient: it may pass (embedder down, the collection's lock busy). The request is queued again
  with its attempt count raised; after ``max_attempts`` it is dead-lettered.
* The worker dies holding it (out of memory, SIGKILL). While it works a worker renews its hold on
  the request every third of ``claim_idle_seconds``; a request held longer without renewal is
  taken by the next worker (XAUTOCLAIM), and the stream's delivery count says how many workers got
  it before. After ``max_worker_deaths`` deaths it is dead-lettered instead of killing one more.

Redis going away stops nothing: the worker waits and reconnects with backoff, and says meanwhile,
in its heartbeat file, that it is alive but not ready. Each job's status (queued, running, done,
failed, dead, with the version or the error) is a Redis hash readable by job id.

Prometheus reads the worker on ``metrics_port`` (``omnirag.indexer.metrics``): jobs by outcome, the
queue's depth and oldest request, dead letters, seconds per stage, commits and compactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import time
from pathlib import Path, PurePosixPath
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from omnirag.core.schemas.ingest import (
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    INGEST_STREAM,
    JOB_TTL_SECONDS,
    IngestRequest,
    job_key,
)
from omnirag.extract import OCR
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.loaders import LoadError, LoadLimits, load_file
from omnirag.indexer.metrics import IndexerMetrics, serve
from omnirag.indexer.pipeline import compact_collection, delete_documents, ingest
from omnirag.indexer.types import SourceDocument

log = logging.getLogger("omnirag.indexer.worker")

#: The kinds of request a metric names; anything else (a malformed request) counts as "unknown".
KINDS = frozenset({"file", "text", "delete"})
#: Redis is unreachable: wait and reconnect. (redis-py wraps socket errors in these.)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
#: Seconds before a transient failure is queued again, doubled per attempt: an embedder that is
#: restarting gets a moment, not three tries in a row within a second.
RETRY_DELAY_SECONDS = 2.0
# Renew the hold only while the request is still this worker's: a worker that renewed late must not
# take back a request another worker has already taken over.
_RENEW_HOLD = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p[1] and p[1][2] == ARGV[3] then
  return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
end
return false
"""


class PermanentError(Exception):
    """A request that can never succeed (bad shape, a path outside the uploads directory)."""


def _redis_down(exc: BaseException) -> bool:
    if isinstance(exc, REDIS_DOWN):
        return True
    # A Redis restarted without its data has lost the consumer group: set it up again.
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def set_status(r: Any, job_id: str, **fields: Any) -> None:
    key = job_key(job_id)
    mapping = {k: str(v) for k, v in fields.items() if v is not None} | {"updated_at": f"{time.time():.3f}"}
    async with r.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, JOB_TTL_SECONDS)
        await pipe.execute()


def to_document(
    req: IngestRequest, uploads: Path, limits: LoadLimits, ocr: OCR | None = None
) -> SourceDocument:
    if req.kind == "text":
        assert req.text is not None
        return SourceDocument(
            source=req.source,
            title=req.title or req.source,
            text=req.text[: limits.max_text_chars],
            metadata={"content_type": "text/plain", "ingest_job": req.job_id},
        )
    assert req.path is not None
    root = uploads.resolve()
    path = (root / req.path).resolve()
    if not path.is_relative_to(root):
        raise PermanentError(f"path {req.path!r} is outside the uploads directory")
    if not path.is_file():
        raise PermanentError(f"uploaded file {req.path!r} does not exist")
    loaded = load_file(path, limits=limits, ocr=ocr)
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
        max_attempts: int | None = None,
        claim_idle_seconds: float | None = None,
        block_ms: int = 2000,
    ) -> None:
        self.settings = settings
        self.uploads = uploads_dir
        self.limits = LoadLimits.from_settings(settings)
        # One OCR engine for the worker's life: images and scanned PDFs are read on its thread.
        self.ocr = OCR(max_pixels=settings.max_image_pixels)
        self.max_attempts = max_attempts or settings.max_attempts
        # A worker that died holding a collection's lock leaves it until its TTL runs out: wait
        # that long for it rather than count a busy lock as a failed attempt.
        self.ingest_settings = settings.model_copy(
            update={"lock_wait_seconds": max(settings.lock_wait_seconds, settings.lock_ttl_seconds * 1.5)}
        )
        self.claim_idle_ms = int((claim_idle_seconds or settings.claim_idle_seconds) * 1000)
        self.block_ms = block_ms
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        # Compactions in the background, at most one per collection: the next upload is not held up
        # by a merge (only its swap takes the collection's lock, briefly).
        self._compactions: dict[str, asyncio.Task[None]] = {}
        self._compact_again: set[str] = set()
        #: The loop's last Redis round trip succeeded (it is taking requests).
        self.ready = False
        self.metrics = IndexerMetrics()
        self._beat_ok = True
        # redis-py's stubs type stream replies loosely; treat the client as untyped here. A read
        # timeout past the blocking read's own: a Redis that stops answering (a partition, not a
        # closed socket) must not hang the loop forever.
        self.redis: Any = aioredis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            socket_timeout=block_ms / 1000 + 10,
            health_check_interval=30,
        )

    async def setup(self) -> None:
        try:
            await self.redis.xgroup_create(INGEST_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def close(self) -> None:
        for task in list(self._compactions.values()):
            task.cancel()  # its merge thread finishes or is abandoned; nothing is half-published
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.ocr.close()
        await self.redis.aclose()

    def _compact_later(self, collection: str) -> None:
        running = self._compactions.get(collection)
        if running is not None and not running.done():
            # It plans again when it is done: what this publish added is not left waiting for the next.
            self._compact_again.add(collection)
            return

        async def compact() -> None:
            try:
                while True:
                    self._compact_again.discard(collection)
                    try:
                        result = await compact_collection(self.ingest_settings, collection)
                    except Exception:
                        self.metrics.compaction(collection, None)
                        raise
                    if result is not None:
                        self.metrics.compaction(collection, result)
                    merged = bool(result and result["version"])  # published (not given up)
                    if merged:
                        log.info("compacted", extra={"collection": collection, **(result or {})})
                    # A merge may fill the next tier; a publish meanwhile may have filled this one.
                    if not merged and collection not in self._compact_again:
                        return
            except Exception:
                log.exception("compaction failed", extra={"collection": collection})

        self._compactions[collection] = asyncio.create_task(compact(), name=f"compact-{collection}")

    async def next_message(self) -> tuple[bytes, dict[bytes, bytes], int] | None:
        """(id, fields, deliveries): first a request a dead worker left unrenewed for too long,
        then a new one. ``deliveries`` counts this one (1 for a new request)."""
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
            if fields is None:  # its entry was deleted meanwhile (Redis < 7 still hands the id out)
                await self.redis.xack(INGEST_STREAM, CONSUMER_GROUP, msg_id)
                return None
            pending = await self.redis.xpending_range(
                INGEST_STREAM, CONSUMER_GROUP, min=msg_id, max=msg_id, count=1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 2
            return msg_id, fields, deliveries
        got = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, {INGEST_STREAM: ">"}, count=1, block=self.block_ms
        )
        if not got:
            return None
        _, messages = got[0]
        msg_id, fields = messages[0]
        return msg_id, fields, 1

    def _count(self, raw: dict[str, str], outcome: str, started: float | None = None) -> None:
        kind = raw.get("kind", "")
        kind = kind if kind in KINDS else "unknown"
        self.metrics.jobs.labels(kind, outcome).inc()
        if started is not None:
            self.metrics.job_seconds.labels(kind).observe(time.perf_counter() - started)

    async def handle(self, msg_id: bytes, fields: dict[bytes, bytes], deliveries: int = 1) -> None:
        started = time.perf_counter()
        raw = {k.decode(): v.decode() for k, v in fields.items()}
        job_id = raw.get("job_id", "unknown")
        try:
            req = IngestRequest.model_validate(raw)
        except ValidationError as exc:
            await self.dead(msg_id, raw, f"malformed request: {exc.errors()[0].get('msg')}")
            return
        deaths = deliveries - 1
        if deaths >= self.settings.max_worker_deaths:
            # Trying again would most likely kill this worker too (out of memory, say).
            await self.dead(
                msg_id, raw, f"the worker died {deaths} times on it (out of memory or killed)", deliveries
            )
            return
        await set_status(
            self.redis,
            job_id,
            status="running",
            attempts=req.attempts + 1,
            deliveries=deliveries,
            collection=req.collection,
        )
        hold = asyncio.create_task(self._hold(msg_id), name="hold")
        try:
            if req.kind == "delete":
                # Uploads only: the gateway checked that this principal may delete this upload.
                summary = await delete_documents(
                    req.collection, [req.document or ""], self.ingest_settings, origin="upload"
                )
            else:
                with self.metrics.stage("load"):
                    doc = await asyncio.to_thread(to_document, req, self.uploads, self.limits, self.ocr)
                self.metrics.bytes.observe(await asyncio.to_thread(self._request_bytes, req))
                summary = await ingest(
                    req.collection,
                    [doc],
                    self.ingest_settings,
                    key=req.origin_key,
                    principal=req.origin_principal,
                )
        except PermanentError as exc:
            await self.dead(msg_id, raw, str(exc), deliveries)
            return
        except LoadError as exc:
            if exc.permanent:
                # The same bytes fail the same way: a retry would only triple the cost.
                await self.dead(msg_id, raw, f"cannot read the file: {exc}", deliveries)
                return
            await self.retry(msg_id, raw, req, f"cannot read the file: {exc}")
            return
        except Exception as exc:
            if _redis_down(exc):
                raise  # the loop waits for Redis; the request stays pending and is taken again
            await self.retry(
                msg_id, raw, req, f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            )
            return
        finally:
            hold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hold
        if summary.embed_seconds:
            self.metrics.stage_seconds.labels("embed").observe(summary.embed_seconds)
        self.metrics.chunks.inc(summary.chunks_embedded)
        if summary.published:
            self.metrics.stage_seconds.labels("publish").observe(summary.commit_seconds)
            self.metrics.commit_seconds.labels(req.collection).observe(summary.commit_seconds)
            self._compact_later(req.collection)
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
        self._count(raw, "done", started)
        log.info(
            "ingested", extra={"job_id": job_id, "collection": req.collection, "version": summary.version}
        )

    async def _hold(self, msg_id: bytes) -> None:
        """Renew this worker's hold on ``msg_id`` while it works, so that only a dead worker's
        request goes idle long enough to be taken. JUSTID: a renewal is not a delivery."""
        while True:
            await asyncio.sleep(self.claim_idle_ms / 3000)
            try:
                held = await self.redis.eval(_RENEW_HOLD, 1, INGEST_STREAM, CONSUMER_GROUP, msg_id, self.name)
            except Exception as exc:  # Redis away for a moment: the next renewal may pass
                log.warning("cannot renew the hold on a request", extra={"reason": str(exc)})
                continue
            if not held:
                log.warning("another worker took over the request in hand", extra={"id": msg_id.decode()})
                return

    async def retry(self, msg_id: bytes, raw: dict[str, str], req: IngestRequest, reason: str) -> None:
        log.warning(
            "ingest failed", extra={"job_id": req.job_id, "attempt": req.attempts + 1, "reason": reason}
        )
        if req.attempts + 1 >= self.max_attempts:
            await self.dead(msg_id, raw, reason)
            return
        self._count(raw, "retried")
        await set_status(self.redis, req.job_id, error=reason)
        await asyncio.sleep(min(RETRY_DELAY_SECONDS * 2**req.attempts, 60.0))
        again = raw | {"attempts": str(req.attempts + 1)}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(INGEST_STREAM, again)
            pipe.xack(INGEST_STREAM, CONSUMER_GROUP, msg_id)
            pipe.xdel(INGEST_STREAM, msg_id)
            await pipe.execute()
        await set_status(self.redis, req.job_id, status="queued", error=reason, attempts=req.attempts + 1)

    def _request_bytes(self, req: IngestRequest) -> int:
        if req.kind == "text":
            return len((req.text or "").encode("utf-8"))
        try:  # to_document checked the path
            return (self.uploads.resolve() / (req.path or "")).stat().st_size
        except OSError:
            return 0

    def _remove_upload(self, relative: str) -> None:
        root = self.uploads.resolve()
        path = (root / relative).resolve()
        if path.is_relative_to(root):  # to_document refused anything else before it got here
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # a read-only mount: the job is done all the same
                log.warning("cannot remove the ingested upload", extra={"path": relative, "reason": str(exc)})

    async def dead(
        self, msg_id: bytes, raw: dict[str, str], reason: str, deliveries: int | None = None
    ) -> None:
        job_id = raw.get("job_id", "unknown")
        entry = raw | {"error": reason[:2000]}
        if deliveries is not None:
            entry["deliveries"] = str(deliveries)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(DEAD_LETTER_STREAM, entry, maxlen=100_000, approximate=True)
            pipe.xack(INGEST_STREAM, CONSUMER_GROUP, msg_id)
            pipe.xdel(INGEST_STREAM, msg_id)
            await pipe.execute()
        await set_status(self.redis, job_id, status="dead", error=reason[:2000], deliveries=deliveries)
        self._count(raw, "dead")
        log.warning(
            "ingest request moved to the dead-letter stream", extra={"job_id": job_id, "reason": reason}
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        beat = None
        if self.settings.heartbeat_file is not None:
            beat = asyncio.create_task(self._heartbeat(self.settings.heartbeat_file), name="heartbeat")
        gauges = asyncio.create_task(self._refresh_gauges(), name="queue-gauges")
        delay = 0.5
        set_up = False
        try:
            while stop is None or not stop.is_set():
                try:
                    if not set_up:
                        await self.setup()
                        set_up = True
                    message = await self.next_message()
                    if not self.ready:
                        log.info("Redis answers: taking requests")
                    self.ready, delay = True, 0.5
                    self.metrics.redis_up.set(1)
                    if message is not None:
                        await self.handle(*message)
                except Exception as exc:
                    if not _redis_down(exc):
                        raise
                    self.ready, set_up = False, False
                    self.metrics.redis_up.set(0)
                    log.warning(
                        "Redis does not answer; waiting to reconnect",
                        extra={"reason": str(exc), "retry_in": round(delay, 1)},
                    )
                    await _wait(stop, delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.settings.redis_retry_max_seconds)
        finally:
            for task in (beat, gauges):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _refresh_gauges(self) -> None:
        """The queue's gauges, read from Redis every ``metrics_refresh_seconds``."""
        while True:
            try:
                await self.metrics.refresh_queue(self.redis)
            except Exception as exc:  # Redis away: the loop says so; the gauges keep their last value
                log.debug("cannot read the queue's gauges", extra={"reason": str(exc)})
            await asyncio.sleep(self.settings.metrics_refresh_seconds)

    async def _heartbeat(self, path: Path) -> None:
        """Rewrite ``path`` every ``heartbeat_seconds`` while the event loop runs, with whether
        Redis answers PING. A stuck loop lets the file age (the liveness probe restarts the worker);
        a lost Redis leaves it fresh with ``"redis": false`` (the readiness probe says not ready, and
        nobody restarts a worker that is only waiting)."""
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=5)
                ok = True
            except Exception as exc:
                if self._beat_ok:
                    log.warning("heartbeat: Redis does not answer", extra={"reason": str(exc)})
                ok = False
            self._beat_ok = ok
            # A few bytes to a local file, on the loop itself: a write still in flight on a
            # thread could land after the worker stopped and tell the probe it lives.
            _write_beat(path, redis_ok=ok)
            await asyncio.sleep(self.settings.heartbeat_seconds)


async def _wait(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _write_beat(path: Path, *, redis_ok: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"at": round(time.time(), 3), "redis": redis_ok}) + "\n", encoding="utf-8")
    tmp.replace(path)  # a probe never reads a half-written file


def read_beat(path: Path) -> dict[str, Any]:
    """The heartbeat file's content: ``{"at": unix time, "redis": bool}``."""
    return dict(json.loads(path.read_text(encoding="utf-8")))


async def run_worker(settings: IndexerSettings) -> int:
    if not settings.redis_url:
        print("error: the worker needs Redis: set INDEXER_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
        return 2
    worker = Worker(settings, uploads_dir=settings.uploads_dir)
    server = None
    if settings.metrics_port:
        server = serve(worker.metrics, settings.metrics_port, settings.metrics_host)
        log.info("metrics served", extra={"port": settings.metrics_port})
    # SIGTERM (a rolling update, a scale-down): finish the request in hand, then stop. Killed
    # instead, the worker would leave it to be taken over and counted as a death.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.run(stop)
    finally:
        await worker.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0
