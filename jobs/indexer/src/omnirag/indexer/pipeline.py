"""One indexing run of one knowledge base: read the sources, split, embed what changed, publish.

Incremental by content hashes. Each document's hash covers its text, title and the splitter
settings: an unchanged document is neither split nor embedded again. A changed one is split, and
only the chunks whose own hash changed are embedded; its chunks that no longer exist are deleted.
A document gone from its source is deleted. A document that failed to load this time keeps its
old chunks (a flaky disk or site must not empty the collection), and is reported. A run that
changes nothing publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omnirag.index import Document, EmbeddingInfo, IndexConfig, VersionWriter, prune_versions, read_current
from omnirag.index.store import read_extra, version_path
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.embed import EmbedClient
from omnirag.indexer.lock import collection_lock
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def chunk_id(kb: str, source: str, index: int) -> str:
    return f"{kb}:{sha256(source)[:16]}:{index:05d}"


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
        if src["type"] == "local":
            from omnirag.indexer.sources.local import iter_local

            root = (kb.base_dir / src["path"]).resolve()
            walk = iter_local(
                root, src.get("glob", "**/*"), src.get("exclude"), max_bytes=settings.max_file_bytes
            )
            items: list[SourceDocument | SourceProblem] = await asyncio.to_thread(list, walk)
            for item in items:
                if isinstance(item, SourceProblem):
                    problems.append(item)
                else:
                    docs[item.source] = item
        else:
            from omnirag.indexer.crawl import CrawlConfig, crawl

            result = await crawl(CrawlConfig.from_spec(src), previous=previous_validators)
            for doc in result.documents:
                docs[doc.source] = doc
            keep.update(result.unchanged)
            problems.extend(result.problems)
            crawl_state.update(result.validators)
    return docs, keep, problems


def _existing(writer: VersionWriter) -> dict[str, dict[str, Any]]:
    """source → {"doc_hash", "chunks": {id: content_hash}, "validators"} from the version being extended."""
    out: dict[str, dict[str, Any]] = {}
    for cid, meta_json, chash in writer.docs.conn.execute("SELECT id, metadata, content_hash FROM docs"):
        meta = json.loads(meta_json)
        src = meta.get("source", "")
        entry = out.setdefault(src, {"doc_hash": meta.get("doc_hash"), "chunks": {}, "validators": {}})
        entry["chunks"][cid] = chash
        for key in ("etag", "last_modified"):
            if meta.get(key):
                entry["validators"][key] = meta[key]
    return out


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


def _current_manifest(settings: IndexerSettings, name: str) -> dict[str, Any] | None:
    current = read_current(settings.index_root, name)
    if current is None:
        return None
    manifest: dict[str, Any] = json.loads(
        (version_path(settings.index_root, name, current) / "manifest.json").read_text()
    )
    return manifest


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
        summary.version = await asyncio.to_thread(writer.commit)
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
        manifest = _current_manifest(settings, kb.name)
        if manifest is not None and (
            (manifest["embedding"]["model"], manifest["embedding"]["dimension"])
            != (embedding.model, embedding.dimension)
            or manifest["index"]["type"] != kb.index_type
        ):
            log.warning(
                "embedding model or index type changed: rebuilding the collection from scratch",
                extra={"kb": kb.name},
            )
            base = None
        with VersionWriter(
            settings.index_root, kb.name, embedding, IndexConfig(type=kb.index_type), base=base
        ) as writer:
            changed = await _apply(kb, writer, embedder, docs, keep, problems, summary, tick)
            if crawl_state:
                # Pages answered 304 keep last run's validators; the rest bring new ones.
                kept = {u: v for u, v in previous.items() if u in keep and u not in crawl_state}
                writer.put_extra(CRAWL_STATE, json.dumps(kept | crawl_state, ensure_ascii=False).encode())
            await _finish(writer, changed, summary, settings)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


async def _apply(
    kb: KnowledgeBase,
    writer: VersionWriter,
    embedder: EmbedClient,
    docs: dict[str, SourceDocument],
    keep: set[str],
    problems: list[SourceProblem],
    summary: RunSummary,
    tick: Progress,
    delete_missing: bool = True,
) -> bool:
    existing = await asyncio.to_thread(_existing, writer)
    splitter = Splitter(kb.chunk_size, kb.chunk_overlap)
    failed_sources = {p.source for p in problems if p.kind in ("error", "too_large")}
    to_embed: list[tuple[str, str, dict[str, Any], str]] = []  # (id, text, metadata, content hash)
    stale: list[str] = []
    retag: dict[str, list[str]] = {}  # doc hash → ids of chunks that did not change in a changed document
    tick("documents", 0, len(docs))
    for source, doc in sorted(docs.items()):
        doc_hash = sha256(doc.title, doc.text, str(kb.chunk_size), str(kb.chunk_overlap))
        old = existing.get(source)
        tick("documents", 1, None)
        if old is not None and old["doc_hash"] == doc_hash:
            summary.unchanged += 1
            continue
        if old is None:
            summary.added += 1
        else:
            summary.changed += 1
        chunks = splitter.split(doc.text, markdown=is_markdown(doc))
        new_ids = set()
        for i, chunk in enumerate(chunks):
            cid = chunk_id(kb.name, source, i)
            new_ids.add(cid)
            meta = {
                **doc.metadata,
                **chunk.metadata,
                "source": source,
                "title": doc.title,
                "kb": kb.name,
                "chunk": i,
            }
            # The chunk's own hash leaves the document hash out: an edit elsewhere in the document
            # must not re-embed this chunk.
            chash = sha256(chunk.text, json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str))
            meta["doc_hash"] = doc_hash
            if old is not None and old["chunks"].get(cid) == chash:
                retag.setdefault(doc_hash, []).append(cid)
                continue
            to_embed.append((cid, chunk.text, meta, chash))
        if old is not None:
            stale.extend(cid for cid in old["chunks"] if cid not in new_ids)
    gone = (
        [s for s in existing if s not in docs and s not in keep and s not in failed_sources]
        if delete_missing
        else []
    )
    for source in gone:
        stale.extend(existing[source]["chunks"])
    summary.deleted = len(gone)
    tick("chunks", 0, len(to_embed))
    if to_embed:
        vectors = await embedder.embed(
            [t for _, t, _, _ in to_embed], on_done=lambda n: tick("chunks", n, None)
        )
        batch = [
            Document(id=cid, text=text, metadata=meta, vector=vec, content_hash=chash)
            for (cid, text, meta, chash), vec in zip(to_embed, vectors, strict=True)
        ]
        await asyncio.to_thread(writer.upsert, batch)
    if stale:
        await asyncio.to_thread(writer.delete, stale)
    for doc_hash, ids in retag.items():
        await asyncio.to_thread(writer.docs.set_metadata_field, ids, "doc_hash", doc_hash)
    summary.chunks_embedded = len(to_embed)
    return bool(to_embed or stale or retag)


async def ingest(
    collection: str,
    docs: list[SourceDocument],
    settings: IndexerSettings,
    chunk_size: int = 800,
    chunk_overlap: int = 100,
) -> RunSummary:
    """Add or replace ``docs`` in ``collection`` (created if new), leaving its other documents alone."""
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
        manifest = _current_manifest(settings, collection)
        config = IndexConfig.model_validate(manifest["index"]) if manifest else IndexConfig()
        with VersionWriter(settings.index_root, collection, embedding, config) as writer:
            changed = await _apply(
                kb,
                writer,
                embedder,
                {d.source: d for d in docs},
                set(),
                [],
                summary,
                lambda *a: None,
                delete_missing=False,
            )
            await _finish(writer, changed, summary, settings)
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
