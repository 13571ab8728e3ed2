"""The collections being served, and their hot reload.

A poll (and ``POST /v1/admin/reload``) reads every collection's ``CURRENT``. A changed version is
loaded beside the one being served — in a thread, checksums verified, its embedding model checked
against the embedder's — and swapped in with one assignment, so a search holds either the old or
the new collection, never a half-loaded one. The old one is not closed by a timer: searches still
running on it hold references, and it is freed (its SQLite connection closed) when the last of
them lets go, however slow they are. A version that fails to load is reported and not
retried until ``CURRENT`` changes again; the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from omnirag.core.errors import Conflict, NotFound
from omnirag.core.metrics import ServiceMetrics
from omnirag.core.schemas.embeddings import EmbedderInfo
from omnirag.index import Collection, dense, list_collections, read_current
from omnirag.index.collection import SegmentCache
from omnirag.index.store import version_path
from omnirag.retriever.config import RetrieverSettings
from omnirag.retriever.embedding import QueryEmbedder

log = logging.getLogger("omnirag.retriever.registry")

Status = Literal["ready", "refused", "failed"]


class RetrieverMetrics:
    def __init__(self, m: ServiceMetrics) -> None:
        self.search_seconds = m.histogram("search_seconds", "Search time in seconds, by mode.", ["mode"])
        self.hits = m.histogram(
            "hits_returned", "Hits returned per search.", buckets=(0, 1, 2, 5, 10, 20, 50, 100, 1000)
        )
        self.empty = m.counter(
            "empty_results_total", "Searches that found nothing, by collection.", ["collection"]
        )
        self.version = m.gauge(
            "collection_version", "1 for the version being served.", ["collection", "version"]
        )
        self.documents = m.gauge("collection_documents", "Documents in the served version.", ["collection"])
        self.reloads = m.counter("reloads_total", "Versions loaded and swapped in.", ["collection"])
        self.reload_failures = m.counter(
            "reload_failures_total", "Versions that failed to load.", ["collection"]
        )
        self.degraded = m.counter(
            "degraded_searches_total", "Searches served without a part, by part.", ["part"]
        )
        self.segments = m.gauge("collection_segments", "Segments of the served version.", ["collection"])
        self.deleted = m.gauge(
            "collection_deleted_chunks",
            "Chunks the served version deletes from its segments.",
            ["collection"],
        )
        self.published = m.gauge(
            "collection_published_timestamp_seconds",
            "When the served version was published (Unix seconds): time() minus it is its age.",
            ["collection"],
        )
        self.segments_opened = m.counter(
            "segments_opened_total",
            "Segments opened from disk; a reload that shares segments with the served version opens only "
            "the new ones.",
            ["collection"],
        )


@dataclass
class Entry:
    name: str
    version: str | None
    status: Status
    detail: str | None = None
    collection: Collection | None = None

    def usable(self) -> Collection:
        if self.collection is None or self.status == "failed":
            raise Conflict(
                f"collection {self.name!r} cannot be served: {self.detail}", code="collection_failed"
            )
        if self.status == "refused":
            raise Conflict(f"collection {self.name!r} is refused: {self.detail}", code="collection_refused")
        return self.collection


def compatibility(collection: Collection, info: EmbedderInfo | None) -> str | None:
    """Why ``collection`` cannot be searched with this embedder, or None if it can."""
    if info is None:
        return None
    emb = collection.manifest.embedding
    if emb.model != info.model or emb.dimension != info.dimension:
        return (
            f"built with {emb.model} ({emb.dimension}d) but the embedder serves "
            f"{info.model} ({info.dimension}d); re-index it with this embedder"
        )
    return None


class Registry:
    def __init__(
        self,
        settings: RetrieverSettings,
        embedder: QueryEmbedder,
        metrics: RetrieverMetrics,
        *,
        faiss_lib: Any = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.metrics = metrics
        self.entries: dict[str, Entry] = {}
        self._lock = asyncio.Lock()
        self.segments = SegmentCache()
        # faiss_lib: the faiss module (default), replaceable only to drive the GPU path where no GPU is.
        self._faiss = faiss_lib
        # Checked here, in the lifespan, so a GPU setting without a GPU stops the start-up with one
        # clear line instead of failing every collection (or every search) later.
        self.gpus = dense.require_gpus("RETRIEVER_FAISS_GPU=true", faiss_lib) if settings.faiss_gpu else 0

    def get(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"no collection named {name!r}", code="collection_not_found")
        return entry

    def problems(self) -> tuple[dict[str, str], dict[str, str]]:
        """(collections that cannot be served, served collections with a warning such as a newer
        version that failed to load)."""
        blocking = {n: f"{e.status}: {e.detail}" for n, e in self.entries.items() if e.status != "ready"}
        warnings = {n: str(e.detail) for n, e in self.entries.items() if e.status == "ready" and e.detail}
        return blocking, warnings

    async def refresh(self) -> dict[str, list[str]]:
        """Load new and changed collections, drop removed ones. Returns what changed."""
        async with self._lock:
            changes: dict[str, list[str]] = {"loaded": [], "removed": [], "failed": []}
            if self.embedder.info is None:
                with contextlib.suppress(Exception):
                    await self.embedder.fetch_info()
                    self.recheck_compatibility()
            root = self.settings.index_root
            names = await asyncio.to_thread(list_collections, root)
            for name in names:
                try:
                    version = await asyncio.to_thread(read_current, root, name)
                except (OSError, ValueError) as exc:
                    self._fail(name, None, str(exc), changes)
                    continue
                entry = self.entries.get(name)
                if version is None or (entry is not None and entry.version == version):
                    continue
                await self._load(name, version, changes)
            for name in set(self.entries) - set(names):
                old = self.entries.pop(name)
                if old.collection is not None:
                    with contextlib.suppress(KeyError):
                        self.metrics.documents.remove(name)
                        self.metrics.version.remove(name, old.collection.version)
                        self.metrics.segments.remove(name)
                        self.metrics.deleted.remove(name)
                        self.metrics.published.remove(name)
                changes["removed"].append(name)
            return changes

    async def _load(self, name: str, version: str, changes: dict[str, list[str]]) -> None:
        path = version_path(self.settings.index_root, name, version)
        try:
            collection = await asyncio.to_thread(self._open, path)
        except Exception as exc:
            log.exception("failed to load a version", extra={"collection": name, "version": version})
            self._fail(
                name, version, f"version {version} failed to load: {type(exc).__name__}: {exc}", changes
            )
            return
        problem = compatibility(collection, self.embedder.info)
        new = Entry(name, version, "refused" if problem else "ready", problem, collection)
        old = self.entries.get(name)
        self.entries[name] = new  # the swap: one assignment; searches on the old one keep it alive
        self._publish_metrics(old, new)
        self.metrics.reloads.labels(name).inc()
        changes["loaded"].append(f"{name}@{version}")
        log.info(
            "serving version",
            extra={
                "collection": name,
                "version": version,
                "documents": collection.count,
                "status": new.status,
            },
        )

    def _open(self, path: Path) -> Collection:
        # Segments shared with the version being served are not opened again (nor moved to the
        # GPUs again): a one-document reload opens one small segment.
        opened = self.segments.opened
        collection = Collection.open(path, verify=self.settings.verify_checksums, cache=self.segments)
        self.metrics.segments_opened.labels(collection.name).inc(self.segments.opened - opened)
        if self.gpus:
            try:
                for segment in collection.segments:
                    if not isinstance(segment.index, dense.GpuIndex):
                        segment.index = dense.to_gpus(segment.index, segment.index_built, self._faiss)
            except BaseException:
                collection.close()
                raise
        return collection

    def _fail(self, name: str, version: str | None, detail: str, changes: dict[str, list[str]]) -> None:
        self.metrics.reload_failures.labels(name).inc()
        changes["failed"].append(name)
        old = self.entries.get(name)
        if old is not None and old.collection is not None:
            # Keep serving what worked; remember the bad version so it is not retried every poll.
            self.entries[name] = Entry(
                name, version, old.status, f"{detail}; still serving {old.version}", old.collection
            )
            return
        self.entries[name] = Entry(name, version, "failed", detail)

    def recheck_compatibility(self) -> None:
        """Re-judge every loaded collection against the embedder (which may have changed model)."""
        for name, entry in list(self.entries.items()):
            if entry.collection is None or entry.status == "failed":
                continue
            problem = compatibility(entry.collection, self.embedder.info)
            status: Status = "refused" if problem else "ready"
            if status != entry.status:
                self.entries[name] = Entry(name, entry.version, status, problem, entry.collection)

    def _publish_metrics(self, old: Entry | None, new: Entry) -> None:
        if old is not None and old.version and old.collection is not None:
            with contextlib.suppress(KeyError):
                self.metrics.version.remove(old.name, old.collection.version)
        assert new.collection is not None
        self.metrics.version.labels(new.name, new.collection.version).set(1)
        self.metrics.documents.labels(new.name).set(new.collection.count)
        self.metrics.segments.labels(new.name).set(len(new.collection.segments))
        self.metrics.deleted.labels(new.name).set(new.collection.manifest.counts.get("deleted", 0))
        with contextlib.suppress(ValueError):  # an unreadable time leaves the series out, not the load
            published = datetime.fromisoformat(new.collection.manifest.created_at.replace("Z", "+00:00"))
            self.metrics.published.labels(new.name).set(published.timestamp())
        # Counters every collection has from its first load on, at 0 until something happens: a
        # panel over their rate reads 0, not "No data".
        self.metrics.reload_failures.labels(new.name)
        self.metrics.empty.labels(new.name)

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("index poll failed")

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.collection is not None:
                entry.collection.close()
        self.entries.clear()
