"""One indexing run of one knowledge base: read the sources, split, embed what changed, publish.

Incremental by content hashes. Each document's hash covers its text, title and the splitter
settings: an unchanged document is neither split nor embedded again. A changed one is split, and
only the chunks whose own hash changed are embedded; its chunks that no longer exist are deleted.
A document gone from its source is deleted. A document that failed to load this time keeps its
old chunks (a flaky disk or site must not empty the collection), and is reported. A run that
changes nothing publishes nothing.

Every chunk records its document's origin (see ``omnirag.index.docstore``). A knowledge-base run
manages only the knowledge base's own documents: uploads into its collection are never replaced or
deleted by it. Uploads live in their own id space, one per principal (the key, or the user a
trusted key acts for): an upload never replaces a knowledge-base document or another principal's
upload of the same source, and the knowledge base never replaces an upload. Before origins were
recorded uploads shared the knowledge base's id space; a run that finds such an old upload where
one of its documents would go leaves the upload alone and reports the conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omnirag.core.names import check_collection_name
from omnirag.extract import OCR
from omnirag.index import (
    Document,
    EmbeddingInfo,
    IndexConfig,
    VersionWriter,
    prune_versions,
    read_current,
    read_manifest,
)
from omnirag.index.compaction import TieredPolicy, compact
from omnirag.index.docstore import ORIGIN_FIELDS, ORIGIN_KB, ORIGIN_UPLOAD, doc_id_of, document_id, origin_of
from omnirag.index.store import read_extra
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.embed import EmbedClient
from omnirag.indexer.lock import collection_lock
from omnirag.indexer.sources import LocalSource
from omnirag.indexer.spec import KnowledgeBase, SpecError
from omnirag.indexer.split import Splitter
from omnirag.indexer.types import SourceDocument, SourceProblem

log = logging.getLogger("omnirag.indexer.pipeline")
Progress = Callable[[str, int, int | None], None]  # (stage, advance, total)


@dataclass
class RunSummary:
    kb: str
    version: str | None = None
    published: bool = False
    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0
    chunks_total: int = 0
    refused: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    # Of those seconds: waiting for the embedder, and the commit (segment, deletions, manifest).
    embed_seconds: float = 0.0
    commit_seconds: float = 0.0
    # The compaction after the publish: segments merged, chunks written, seconds, version (or why not).
    compaction: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def chunk_id(collection: str, doc_id: str, index: int) -> str:
    return f"{collection}:{doc_id}:{index:05d}"


@dataclass(frozen=True)
class Origin:
    """Whose documents one write manages, and what each chunk it writes records about them."""

    kind: str  # ORIGIN_KB or ORIGIN_UPLOAD
    fields: dict[str, Any] = field(default_factory=dict)
    principal: str | None = None

    def doc_id(self, source: str) -> str:
        if self.kind == ORIGIN_KB:
            # The hash the chunk ids of a knowledge base always had: its documents keep their ids.
            return document_id(source)
        return document_id(ORIGIN_UPLOAD, self.principal or "", source)

    def stamp(self, doc_id: str, doc: SourceDocument) -> dict[str, Any]:
        out = {"origin": self.kind, **self.fields, "doc_id": doc_id}
        if self.kind == ORIGIN_KB and doc.metadata.get("origin_source") is not None:
            out["origin_source"] = doc.metadata["origin_source"]
        return out


def kb_origin() -> Origin:
    return Origin(ORIGIN_KB)


def upload_origin(key: str | None, principal: str | None) -> Origin:
    fields = {"origin_key": key, "origin_principal": principal}
    return Origin(ORIGIN_UPLOAD, {k: v for k, v in fields.items() if v is not None}, principal)


def is_markdown(doc: SourceDocument) -> bool:
    ctype = str(doc.metadata.get("content_type", ""))
    return "markdown" in ctype or doc.source.lower().endswith((".md", ".markdown")) or "html" in ctype


async def gather_documents(
    kb: KnowledgeBase,
    settings: IndexerSettings,
    previous_validators: dict[str, dict],
    crawl_state: dict[str, dict],
) -> tuple[dict[str, SourceDocument], set[str], list[SourceProblem]]:
    """(documents by source, sources to keep as they are, problems). Fills ``crawl_state`` with the
    validators (ETag, Last-Modified, links) the crawler wants back next run."""
    docs: dict[str, SourceDocument] = {}
    keep: set[str] = set()
    problems: list[SourceProblem] = []
    for src in kb.sources:
        label = src.label
        if isinstance(src, LocalSource):
            from omnirag.indexer.loaders import LoadLimits
            from omnirag.indexer.sources.local import iter_source

            # One OCR engine for every image and scanned page of the source.
            with OCR(max_pixels=settings.max_image_pixels) as ocr:
                walk = iter_source(
                    src,
                    kb.base_dir,
                    max_bytes=settings.max_file_bytes,
                    limits=LoadLimits.from_settings(settings),
                    ocr=ocr,
                )
                items: list[SourceDocument | SourceProblem] = await asyncio.to_thread(list, walk)
            for item in items:
                if isinstance(item, SourceProblem):
                    problems.append(item)
                else:
                    item.metadata["origin_source"] = label
                    docs[item.source] = item
        else:
            from omnirag.indexer.sources.web import CrawlConfig, crawl

            result = await crawl(CrawlConfig.from_source(src), previous=previous_validators)
            for doc in result.documents:
                doc.metadata["origin_source"] = label
                docs[doc.source] = doc
            keep.update(result.unchanged)
            problems.extend(result.problems)
            crawl_state.update(result.validators)
    return docs, keep, problems


STAMP_KEYS = ("origin", "origin_source", "origin_key", "origin_principal", "doc_id")


@dataclass
class StoredDocument:
    """One document of the collection as the run found it: enough to tell what changed."""

    source: str
    doc_hash: str | None
    stamp: dict[str, Any]
    chunks: dict[str, str] = field(default_factory=dict)  # chunk id → content hash


def _existing(writer: VersionWriter, kind: str) -> tuple[dict[str, StoredDocument], set[str]]:
    """(document id → what is stored of it, for the documents of origin ``kind``; ids of the other
    documents) in the version being extended."""
    own: dict[str, StoredDocument] = {}
    other: set[str] = set()
    for row in writer.chunks():
        meta = row.metadata
        doc_id = doc_id_of(meta)
        if origin_of(meta) != kind:
            other.add(doc_id)
            continue
        entry = own.get(doc_id)
        if entry is None:
            entry = own[doc_id] = StoredDocument(
                source=meta.get("source", ""),
                doc_hash=meta.get("doc_hash"),
                stamp={k: meta.get(k) for k in STAMP_KEYS},
            )
        entry.chunks[row.id] = row.content_hash
    return own, other


CRAWL_STATE = "crawl.json"


def _previous_validators(settings: IndexerSettings, kb: KnowledgeBase) -> dict[str, dict]:
    """What the crawler returned last time (kept beside the version it built, in extra/)."""
    raw = read_extra(settings.index_root, kb.name, CRAWL_STATE)
    if raw is None:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


@contextlib.asynccontextmanager
async def _session(
    settings: IndexerSettings, name: str, *, lock_wait: float, expect_model: str | None = None
) -> AsyncIterator[tuple[EmbedClient, EmbeddingInfo]]:
    """The embedder (and what it serves) and this collection's write lock, for one run."""
    async with EmbedClient(
        settings.embedder_url,
        batch_size=settings.embed_batch_size,
        concurrency=settings.embed_concurrency,
        timeout=settings.embed_timeout,
        headers=settings.service_headers(),
    ) as embedder:
        info = await embedder.fetch_info()
        if expect_model and expect_model != info["model"]:
            raise SpecError(
                f"knowledge base {name!r} expects {expect_model}, the embedder serves {info['model']}"
            )
        embedding = EmbeddingInfo(
            model=info["model"],
            dimension=info["dimension"],
            normalize=True,
            languages=info.get("languages") or [],
        )
        async with collection_lock(
            settings.redis_url, settings.index_root, name, ttl=settings.lock_ttl_seconds, wait=lock_wait
        ):
            await asyncio.to_thread(settings.index_root.mkdir, parents=True, exist_ok=True)
            yield embedder, embedding


async def _finish(
    writer: VersionWriter, changed: bool, summary: RunSummary, settings: IndexerSettings
) -> None:
    summary.chunks_total = writer.count()
    if changed:
        started = time.perf_counter()
        summary.version = await asyncio.to_thread(writer.commit)
        summary.commit_seconds = round(time.perf_counter() - started, 4)
        summary.published = True
        await asyncio.to_thread(
            prune_versions,
            settings.index_root,
            summary.kb,
            keep=settings.keep_versions,
            grace_seconds=settings.prune_grace_seconds,
        )
    else:
        summary.version = read_current(settings.index_root, summary.kb)


async def compact_collection(
    settings: IndexerSettings, name: str, *, full: bool = False
) -> dict[str, Any] | None:
    """Merge ``name``'s segments as the tiered policy says, outside the write lock; the lock is
    taken only for the swap (from the thread the merge runs in, on this event loop). None when
    compaction is off; otherwise what was merged (nothing when the policy asks for nothing)."""
    if not settings.compaction:
        return None
    loop = asyncio.get_running_loop()

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        held = collection_lock(
            settings.redis_url,
            settings.index_root,
            name,
            ttl=settings.lock_ttl_seconds,
            wait=max(settings.lock_wait_seconds, 30.0),
        )
        asyncio.run_coroutine_threadsafe(held.__aenter__(), loop).result()
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(held.__aexit__(None, None, None), loop).result()

    policy = TieredPolicy(fanout=settings.compaction_fanout, min_segment=settings.compaction_min_segment)
    result = await asyncio.to_thread(
        compact, settings.index_root, name, lock=locked, policy=policy, full=full, gpu=settings.faiss_gpu
    )
    if result.version is not None:
        # Under the lock, as a writer prunes: never beside a writer or a swap in progress.
        def prune() -> None:
            with locked():
                prune_versions(
                    settings.index_root,
                    name,
                    keep=settings.keep_versions,
                    grace_seconds=settings.prune_grace_seconds,
                )

        await asyncio.to_thread(prune)
    return {
        "merged": len(result.merged),
        "chunks": result.chunks,
        "seconds": round(result.seconds, 3),
        "version": result.version,
        "gave_up": result.gave_up,
    }


async def run_kb(
    kb: KnowledgeBase, settings: IndexerSettings, progress: Progress | None = None
) -> RunSummary:
    started = time.monotonic()
    summary = RunSummary(kb=kb.name)
    tick = progress or (lambda stage, n, total: None)
    async with _session(
        settings, kb.name, lock_wait=settings.lock_wait_seconds, expect_model=kb.embedding_model
    ) as (embedder, embedding):
        previous = _previous_validators(settings, kb)
        crawl_state: dict[str, dict] = {}
        docs, keep, problems = await gather_documents(kb, settings, previous, crawl_state)
        summary.refused = [p.source for p in problems if p.kind == "refused"]
        summary.problems = [{"source": p.source, "kind": p.kind, "reason": p.reason} for p in problems]
        base: str | None = "current"
        manifest = read_manifest(settings.index_root, kb.name)
        if manifest is not None and (
            (manifest.embedding.model, manifest.embedding.dimension) != (embedding.model, embedding.dimension)
            or manifest.index.type != kb.index_type
        ):
            log.warning(
                "embedding model or index type changed: rebuilding the collection from scratch",
                extra={"kb": kb.name},
            )
            base = None
        with VersionWriter(
            settings.index_root,
            kb.name,
            embedding,
            IndexConfig(type=kb.index_type),
            base=base,
            gpu=settings.faiss_gpu,
        ) as writer:
            changed = await _apply(kb, writer, embedder, docs, keep, problems, summary, tick, kb_origin())
            if crawl_state:
                # Pages answered 304 keep last run's validators; the rest bring new ones.
                kept = {u: v for u, v in previous.items() if u in keep and u not in crawl_state}
                writer.put_extra(CRAWL_STATE, json.dumps(kept | crawl_state, ensure_ascii=False).encode())
            await _finish(writer, changed, summary, settings)
    if summary.published:
        summary.compaction = await compact_collection(settings, kb.name)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


@dataclass(frozen=True)
class PendingChunk:
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str


@dataclass
class Plan:
    """What one write changes in a collection, decided from the sources and the stored hashes
    before anything is embedded or written."""

    embed: list[PendingChunk] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # chunk ids
    # Chunks whose text and vector stay but whose metadata is brought up to date: the unchanged
    # chunks of a changed document, and unchanged documents whose origin is not recorded yet.
    retag: list[tuple[list[str], dict[str, Any]]] = field(default_factory=list)
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    conflicts: list[dict[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.embed or self.delete or self.retag)


CONFLICT_REASON = (
    "an upload into this collection has the same source and is kept; delete it through the API "
    "(DELETE /v1/collections/{name}/documents/{id}) for the knowledge base's copy to be indexed"
)


def plan_changes(
    kb: KnowledgeBase,
    existing: dict[str, StoredDocument],
    others: set[str],
    docs: dict[str, SourceDocument],
    *,
    origin: Origin,
    keep: AbstractSet[str] = frozenset(),
    failed_sources: AbstractSet[str] = frozenset(),
    delete_missing: bool = True,
    now: float | None = None,
    tick: Progress | None = None,
) -> Plan:
    """The plan that brings ``origin``'s documents in the collection to ``docs``. ``keep``: sources
    unchanged since the last run that were not read again (a 304); ``failed_sources``: sources that
    failed to load this time and keep their old chunks."""
    plan = Plan()
    splitter = Splitter(kb.chunk_size, kb.chunk_overlap)
    tick = tick or (lambda stage, n, total: None)
    now = round(time.time(), 3) if now is None else now
    wanted: set[str] = set()
    tick("documents", 0, len(docs))
    for source, doc in sorted(docs.items()):
        doc_id = origin.doc_id(source)
        tick("documents", 1, None)
        if doc_id in others:
            # An upload from before origins were recorded holds this document's id: keep it.
            plan.conflicts.append({"source": source, "kind": "conflict", "reason": CONFLICT_REASON})
            continue
        wanted.add(doc_id)
        stamp = origin.stamp(doc_id, doc)
        doc_hash = sha256(doc.title, doc.text, str(kb.chunk_size), str(kb.chunk_overlap))
        old = existing.get(doc_id)
        if old is not None and old.doc_hash == doc_hash:
            plan.unchanged += 1
            if any(old.stamp.get(k) != v for k, v in stamp.items()):
                plan.retag.append((list(old.chunks), stamp))
            continue
        if old is None:
            plan.added += 1
        else:
            plan.changed += 1
        new_ids = set()
        kept: list[str] = []
        for i, chunk in enumerate(splitter.split(doc.text, markdown=is_markdown(doc))):
            cid = chunk_id(kb.name, doc_id, i)
            new_ids.add(cid)
            meta = {
                k: v
                for k, v in {
                    **doc.metadata,
                    **chunk.metadata,
                    "source": source,
                    "title": doc.title,
                    "kb": kb.name,
                    "chunk": i,
                }.items()
                if k not in ORIGIN_FIELDS
            }
            # The chunk's own hash leaves the document hash out (an edit elsewhere in the document
            # must not re-embed this chunk) and its origin and time (recording them is no reason to
            # embed again either).
            chash = sha256(chunk.text, json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str))
            meta |= stamp | {"indexed_at": now, "doc_hash": doc_hash}
            if old is not None and old.chunks.get(cid) == chash:
                kept.append(cid)
                continue
            plan.embed.append(PendingChunk(cid, chunk.text, meta, chash))
        if kept:
            plan.retag.append((kept, stamp | {"indexed_at": now, "doc_hash": doc_hash}))
        if old is not None:
            plan.delete.extend(cid for cid in old.chunks if cid not in new_ids)
    if delete_missing:
        gone = [
            d
            for d, entry in existing.items()
            if d not in wanted and entry.source not in keep and entry.source not in failed_sources
        ]
        for doc_id in gone:
            plan.delete.extend(existing[doc_id].chunks)
        plan.deleted = len(gone)
    return plan


async def apply_plan(writer: VersionWriter, embedder: EmbedClient, plan: Plan, tick: Progress) -> float:
    """Embed the plan's new chunks and write every change into the version being built; returns
    the seconds spent embedding."""
    tick("chunks", 0, len(plan.embed))
    embed_seconds = 0.0
    if plan.embed:
        started = time.perf_counter()
        vectors = await embedder.embed(
            [c.text for c in plan.embed], on_done=lambda n: tick("chunks", n, None)
        )
        embed_seconds = time.perf_counter() - started
        batch = [
            Document(id=c.id, text=c.text, metadata=c.metadata, vector=vec, content_hash=c.content_hash)
            for c, vec in zip(plan.embed, vectors, strict=True)
        ]
        await asyncio.to_thread(writer.upsert, batch)
    if plan.delete:
        await asyncio.to_thread(writer.delete, plan.delete)
    for ids, fields in plan.retag:
        await asyncio.to_thread(writer.retag, ids, fields)
    return embed_seconds


async def _apply(
    kb: KnowledgeBase,
    writer: VersionWriter,
    embedder: EmbedClient,
    docs: dict[str, SourceDocument],
    keep: set[str],
    problems: list[SourceProblem],
    summary: RunSummary,
    tick: Progress,
    origin: Origin,
    delete_missing: bool = True,
) -> bool:
    """Plan the write of ``docs`` into ``writer``, apply it, and count it in ``summary``."""
    existing, others = await asyncio.to_thread(_existing, writer, origin.kind)
    plan = plan_changes(
        kb,
        existing,
        others,
        docs,
        origin=origin,
        keep=keep,
        failed_sources={p.source for p in problems if p.kind in ("error", "too_large")},
        delete_missing=delete_missing,
        tick=tick,
    )
    summary.problems.extend(plan.conflicts)
    summary.added, summary.changed, summary.unchanged = plan.added, plan.changed, plan.unchanged
    summary.deleted = plan.deleted
    summary.embed_seconds = round(await apply_plan(writer, embedder, plan, tick), 4)
    summary.chunks_embedded = len(plan.embed)
    return not plan.empty


async def ingest(
    collection: str,
    docs: list[SourceDocument],
    settings: IndexerSettings,
    chunk_size: int = 800,
    chunk_overlap: int = 100,
    *,
    key: str | None = None,
    principal: str | None = None,
) -> RunSummary:
    """Add or replace ``docs`` as uploads of ``principal`` (through API key ``key``) in
    ``collection`` (created if new), leaving every other document alone: the principal's uploads of
    other sources, other principals' uploads, and the knowledge base's documents."""
    started = time.monotonic()
    summary = RunSummary(kb=collection)
    kb = KnowledgeBase(
        name=collection, sources=[], base_dir=Path("."), chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    # Uploads queue behind a running index of the same collection rather than failing.
    async with _session(settings, collection, lock_wait=max(settings.lock_wait_seconds, 30.0)) as (
        embedder,
        embedding,
    ):
        manifest = read_manifest(settings.index_root, collection)
        config = manifest.index if manifest else IndexConfig()
        with VersionWriter(
            settings.index_root, collection, embedding, config, gpu=settings.faiss_gpu
        ) as writer:
            changed = await _apply(
                kb,
                writer,
                embedder,
                {d.source: d for d in docs},
                set(),
                [],
                summary,
                lambda *a: None,
                upload_origin(key, principal),
                delete_missing=False,
            )
            await _finish(writer, changed, summary, settings)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


async def delete_documents(
    collection: str,
    sources_or_ids: list[str],
    settings: IndexerSettings,
    *,
    origin: str | None = None,
) -> RunSummary:
    """Delete documents from ``collection``, under its write lock, and publish the version without
    them. Each item is a document id or a source (which names every document that has it); with
    ``origin`` only documents of that origin ("kb" or "upload") go. Needs no embedder. Deleting what
    is not there publishes nothing; ``summary.deleted`` counts the documents deleted."""
    started = time.monotonic()
    summary = RunSummary(kb=check_collection_name(collection))
    names = list(dict.fromkeys(s for s in sources_or_ids if s))
    async with collection_lock(
        settings.redis_url,
        settings.index_root,
        collection,
        ttl=settings.lock_ttl_seconds,
        wait=max(settings.lock_wait_seconds, 30.0),
    ):
        manifest = read_manifest(settings.index_root, collection)
        if manifest is None or not names:
            summary.version = manifest.version if manifest else None
            return summary
        with VersionWriter(
            settings.index_root, collection, manifest.embedding, manifest.index, gpu=settings.faiss_gpu
        ) as writer:
            found = await asyncio.to_thread(writer.document_chunks, names, origin=origin)
            stale = [cid for ids in found.values() for cid in ids]
            if stale:
                await asyncio.to_thread(writer.delete, stale)
            summary.deleted = len(found)
            await _finish(writer, bool(stale), summary, settings)
    summary.seconds = round(time.monotonic() - started, 3)
    log.info(
        "documents deleted",
        extra={"collection": collection, "deleted": summary.deleted, "version": summary.version},
    )
    return summary


async def delete_collection(settings: IndexerSettings, collection: str) -> bool:
    """Remove a collection and every version of it, under its write lock. False if there is none.

    The directory is first renamed to a hidden name, in one step: the retriever and the indexer's
    listing see the collection gone at once, and a crash while its files are removed leaves only
    that hidden directory, which the next delete of the same name clears."""
    check_collection_name(collection)
    root = settings.index_root
    async with collection_lock(
        settings.redis_url, root, collection, ttl=settings.lock_ttl_seconds, wait=settings.lock_wait_seconds
    ):
        trash_name = re.compile(rf"\.deleted-{re.escape(collection)}-[0-9a-f]{{8}}")
        leftovers = await asyncio.to_thread(
            lambda: [p for p in root.glob(".deleted-*") if trash_name.fullmatch(p.name)]
        )
        for leftover in leftovers:
            await asyncio.to_thread(shutil.rmtree, leftover, True)
        path = root / collection
        if not path.is_dir():
            return False
        trash = root / f".deleted-{collection}-{secrets.token_hex(4)}"
        await asyncio.to_thread(os.rename, path, trash)
        await asyncio.to_thread(shutil.rmtree, trash)
    log.info("collection deleted", extra={"collection": collection})
    return True
