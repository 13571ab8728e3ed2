"""The indexer's Prometheus metrics (``omnirag_indexer_*``): what the worker serves on ``/metrics``.

The worker has no HTTP API; it serves these on ``metrics_port`` (prometheus_client's own server on
a thread: a scrape never waits for the event loop, and a stuck loop shows as stale queue gauges,
not as a failed scrape). The queue's gauges are read from Redis by the worker's loop every
``metrics_refresh_seconds``; the rest count what the worker did.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import start_http_server

from omnirag.core.metrics import ServiceMetrics
from omnirag.core.schemas.ingest import CONSUMER_GROUP, DEAD_LETTER_STREAM, INGEST_STREAM

#: Seconds of indexing work: a one-document commit takes tens of milliseconds, a big merge minutes.
WORK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
#: Bytes of one request's file.
BYTE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7, 5e7, 1e8)


class IndexerMetrics(ServiceMetrics):
    """The worker's series. ``collection`` labels only what a team names (bounded by the collection
    rule and the number of collections); never a document, a key or a user."""

    def __init__(self) -> None:
        super().__init__("indexer")
        self.jobs = self.counter(
            "jobs_total",
            "Ingest requests finished, by kind (file, text, delete) and outcome (done; retried: queued "
            "again after a transient failure; dead: moved to the dead-letter stream).",
            ["kind", "outcome"],
        )
        self.job_seconds = self.histogram(
            "job_seconds", "Seconds from taking a request to its outcome, by kind.", ["kind"], WORK_BUCKETS
        )
        self.stage_seconds = self.histogram(
            "stage_seconds",
            "Seconds of each stage of a request: load (read the file, OCR), embed (the embedder's "
            "calls), publish (write the segment and its manifest).",
            ["stage"],
            WORK_BUCKETS,
        )
        self.bytes = self.histogram("request_bytes", "Bytes of each ingested file or text.", (), BYTE_BUCKETS)
        self.chunks = self.counter("chunks_embedded_total", "Chunks embedded and written.")
        self.commit_seconds = self.histogram(
            "commit_seconds",
            "Seconds of one commit (a new segment, its deletions and the manifest), by collection.",
            ["collection"],
            WORK_BUCKETS,
        )
        self.compactions = self.counter(
            "compactions_total",
            "Compaction runs, by collection and outcome (merged; idle: the policy asked for nothing; "
            "gave_up: a writer pruned what it merged; failed).",
            ["collection", "outcome"],
        )
        self.compaction_seconds = self.histogram(
            "compaction_seconds",
            "Seconds of a compaction that merged, by collection.",
            ["collection"],
            WORK_BUCKETS,
        )
        self.compacted_chunks = self.counter(
            "compacted_chunks_total", "Live chunks rewritten by compaction, by collection.", ["collection"]
        )
        self.queue_depth = self.gauge(
            "queue_depth", "Requests in the ingest stream: waiting, plus taken and not yet acknowledged."
        )
        self.queue_pending = self.gauge(
            "queue_pending", "Requests taken by a worker and not yet acknowledged."
        )
        self.oldest_age = self.gauge(
            "queue_oldest_age_seconds", "Age of the oldest request in the ingest stream (0 when it is empty)."
        )
        self.dead_letters = self.gauge("dead_letters", "Requests in the dead-letter stream.")
        self.redis_up = self.gauge("redis_up", "1 while the worker's last Redis round trip succeeded.")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - started)

    def compaction(self, collection: str, result: dict[str, Any] | None) -> None:
        """Count one run of ``compact_collection`` (its result, or None when it failed)."""
        if result is None:
            self.compactions.labels(collection, "failed").inc()
        elif result.get("version"):
            self.compactions.labels(collection, "merged").inc()
            self.compaction_seconds.labels(collection).observe(float(result.get("seconds") or 0.0))
            self.compacted_chunks.labels(collection).inc(int(result.get("chunks") or 0))
        else:
            self.compactions.labels(collection, "gave_up" if result.get("gave_up") else "idle").inc()

    async def refresh_queue(self, redis: Any) -> None:
        """Read the queue's gauges from Redis (a few O(1) calls)."""
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(INGEST_STREAM)
            pipe.xrange(INGEST_STREAM, "-", "+", count=1)
            pipe.xlen(DEAD_LETTER_STREAM)
            pipe.xpending(INGEST_STREAM, CONSUMER_GROUP)
            depth, first, dead, pending = await pipe.execute(raise_on_error=False)
        self.queue_depth.set(int(depth) if isinstance(depth, int) else 0)
        self.dead_letters.set(int(dead) if isinstance(dead, int) else 0)
        self.queue_pending.set(int(pending.get("pending", 0)) if isinstance(pending, dict) else 0)
        age = 0.0
        if isinstance(first, list) and first:
            # A stream id starts with its entry's time in milliseconds (a retry is a new entry).
            entry_id = first[0][0]
            millis = int((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)).split("-")[0])
            age = max(0.0, time.time() - millis / 1000)
        self.oldest_age.set(age)


def serve(metrics: ServiceMetrics, port: int, addr: str) -> Any:
    """Serve ``/metrics`` on ``port`` from a thread; returns the server (``shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return server
