"""Versions on disk: written whole in a temporary directory, fsynced, renamed into ``versions/``,
then published by replacing ``CURRENT`` with a rename. A reader that reads ``CURRENT`` finds either
the old or the new version, complete, at every instant — a writer killed at any moment leaves at
most a stray temporary directory, which :func:`prune_versions` removes later.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from omnirag.core.names import check_collection_name as check_name
from omnirag.core.names import is_collection_name
from omnirag.index.collection import Collection, SegmentCache
from omnirag.index.docstore import ChunkRow, DocStore, Document
from omnirag.index.ids import int_id
from omnirag.index.manifest import EmbeddingInfo, IndexConfig, IndexType, Manifest, SegmentRef, hash_tree
from omnirag.index.postings import Postings
from omnirag.index.segment import (
    SEGMENT_INFO,
    SEGMENT_RE,
    SEGMENTS,
    SegmentInfo,
    build_segment,
    fsync_path,
    fsync_tree,
    install_segment,
    new_segment_id,
    read_deletions,
    segment_path,
    write_deletions,
)
from omnirag.index.sparse import TOKENIZER_NAME

log = logging.getLogger("omnirag.index.store")

# The writer's own files in extra/ (e.g. crawl.json): a plain name, no path.
EXTRA_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,62}$")
VERSION_RE = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")
CURRENT = "CURRENT"
TMP_DIR = ".tmp"


def new_version_id() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z-" + secrets.token_hex(3)


def list_collections(root: Path) -> list[str]:
    """Collections under ``root`` that have a published version."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if is_collection_name(p.name) and (p / CURRENT).is_file())


def read_current(root: Path, name: str) -> str | None:
    try:
        version = (root / name / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"{root / name / CURRENT}: not a version id: {version[:80]!r}")
    return version


def load_manifest(root: Path, name: str, version: str) -> Manifest:
    return Manifest.model_validate_json((version_path(root, name, version) / "manifest.json").read_bytes())


def read_manifest(root: Path, name: str) -> Manifest | None:
    """The manifest of the version being served, or None when the collection has none yet."""
    version = read_current(root, name)
    return None if version is None else load_manifest(root, name, version)


def version_path(root: Path, name: str, version: str) -> Path:
    return root / name / "versions" / version


def open_current(
    root: Path, name: str, *, verify: bool = True, cache: SegmentCache | None = None
) -> Collection | None:
    version = read_current(root, name)
    if version is None:
        return None
    return Collection.open(version_path(root, name, version), verify=verify, cache=cache)


@dataclass(eq=False)
class _Parent:
    """A segment of the version a writer builds on: its docstore (read-only), its sorted int ids and
    the int ids deleted from it so far (the parent's deletions and this writer's)."""

    ref: SegmentRef | None  # None: a format 1 version, installed as a segment at commit
    path: Path
    docs: DocStore
    ids: np.ndarray
    deleted: set[int]

    def live_mask(self, int_ids: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.ids, int_ids), max(len(self.ids) - 1, 0))
        owned = self.ids[at] == int_ids if len(self.ids) else np.zeros(len(int_ids), dtype=bool)
        if self.deleted:
            owned &= ~np.isin(int_ids, np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted)))
        mask: np.ndarray = owned
        return mask

    def exclude(self) -> list[int]:
        return sorted(self.deleted)

    @property
    def live_count(self) -> int:
        return len(self.ids) - len(self.deleted)


class VersionWriter:
    """Builds the next version of one collection from its current one (or from nothing).

    Only what changes is written: the chunks upserted (or re-tagged) go into one new segment, the
    chunks deleted or replaced are recorded as deletions of the segments that hold them, and every
    other segment is shared with the version before. A format 1 parent is installed as a segment
    (its files linked, its postings built) the first time a writer builds on it.

    Use as a context manager: ``commit()`` publishes; leaving without it discards the work.
    One writer per collection at a time is the caller's duty (the indexer holds a lock).
    """

    def __init__(
        self,
        root: Path,
        name: str,
        embedding: EmbeddingInfo,
        config: IndexConfig | None = None,
        *,
        base: str | None = "current",
        gpu: bool = False,
    ) -> None:
        self.root = Path(root)
        # Train and fill IVF-PQ on the GPUs (the indexer's INDEXER_FAISS_GPU); the version is written
        # from a CPU copy either way, so readers never need a GPU.
        self.gpu = gpu
        self.name = check_name(name)
        self.embedding = embedding
        self.config = config or IndexConfig()
        self.version = new_version_id()
        self.segment = new_segment_id()
        self.parent = read_current(self.root, name) if base == "current" else base
        parent_manifest = None
        if self.parent is not None:
            # Checked before anything is written, so a refused writer leaves nothing behind.
            parent_manifest = load_manifest(self.root, name, self.parent)
            if (parent_manifest.embedding.model, parent_manifest.embedding.dimension) != (
                embedding.model,
                embedding.dimension,
            ):
                raise ValueError(
                    f"collection {name!r} was built with {parent_manifest.embedding.model} "
                    f"({parent_manifest.embedding.dimension}d), "
                    f"not {embedding.model} ({embedding.dimension}d); "
                    "rebuild it from scratch (base=None)"
                )
        self.tmp = self.root / name / TMP_DIR / self.version
        self.segment_tmp = self.root / name / TMP_DIR / self.segment
        self.parents: list[_Parent] = []
        self.tmp.mkdir(parents=True)
        try:
            self.segment_tmp.mkdir()
            if parent_manifest is not None:
                assert self.parent is not None
                self.parents = self._open_parents(version_path(self.root, name, self.parent), parent_manifest)
            self.docs = DocStore.create(self.segment_tmp / "docs.sqlite", embedding.dimension)
        except BaseException:
            self._close_parents()
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.segment_tmp, ignore_errors=True)
            raise
        self._done = False

    def _open_parents(self, parent_dir: Path, manifest: Manifest) -> list[_Parent]:
        dim = self.embedding.dimension
        if manifest.format_version == 1:
            docs = DocStore.open_readonly(parent_dir / "docs.sqlite", dim)
            ids = np.fromiter(
                (r[0] for r in docs.conn.execute("SELECT int_id FROM docs ORDER BY int_id")), dtype=np.int64
            )
            return [_Parent(None, parent_dir, docs, ids, set())]
        parents = []
        for ref in manifest.segments:
            path = segment_path(self.root, self.name, ref.id)
            docs = DocStore.open_readonly(path / "docs.sqlite", dim)
            ids = np.load(path / "postings" / "ids.npy", allow_pickle=False)
            deleted = read_deletions(parent_dir, ref.deletions)
            parents.append(_Parent(ref, path, docs, ids, set(deleted.tolist())))
        return parents

    def _close_parents(self) -> None:
        for parent in self.parents:
            parent.docs.close()

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def _delete_in_parents(self, int_ids: np.ndarray) -> int:
        """Mark the live parent chunks among ``int_ids`` deleted; how many there were."""
        marked = 0
        for parent in self.parents:
            live = int_ids[parent.live_mask(int_ids)]
            parent.deleted.update(live.tolist())
            marked += len(live)
        return marked

    def upsert(self, docs: Sequence[Document]) -> None:
        self.docs.upsert(docs)
        self._delete_in_parents(np.array([int_id(d.id) for d in docs], dtype=np.int64))

    def put_extra(self, name: str, data: bytes) -> None:
        """Store a small file of the writer's own (e.g. crawl state) in ``extra/``, versioned and
        checksummed with everything else; readers of the index ignore it."""
        if not EXTRA_NAME_RE.fullmatch(name) or ".." in name:
            raise ValueError(f"bad extra file name {name!r}")
        (self.tmp / "extra").mkdir(exist_ok=True)
        (self.tmp / "extra" / name).write_bytes(data)

    def delete(self, ids: Sequence[str]) -> int:
        int_ids = np.array([int_id(i) for i in ids], dtype=np.int64)
        in_new = self.docs.present(ids)
        self.docs.delete(ids)
        # A chunk upserted by this writer already deleted its parent copy: counted once.
        return len(in_new) + self._delete_in_parents(
            int_ids[[i not in in_new for i in ids]] if in_new else int_ids
        )

    def retag(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        """Bring chunks' metadata up to date without embedding them again (text and vector stay):
        chunks of earlier segments are copied into the new one and deleted where they were."""
        int_ids = np.array([int_id(i) for i in ids], dtype=np.int64)
        for parent in self.parents:
            live = int_ids[parent.live_mask(int_ids)]
            if len(live):
                self.docs.insert_rows(parent.docs.rows_for(live))
                parent.deleted.update(live.tolist())
        self.docs.set_metadata_fields(ids, fields)

    def chunks(self) -> Iterator[ChunkRow]:
        """Every live chunk of the version being built (id, metadata, content hash)."""
        for parent in self.parents:
            yield from parent.docs.iter_chunks(exclude=parent.exclude())
        yield from self.docs.iter_chunks()

    def document_chunks(
        self, ids_or_sources: Sequence[str], *, origin: str | None = None
    ) -> dict[str, list[str]]:
        """Document id → chunk ids of the documents named by id or source (see DocStore)."""
        out: dict[str, list[str]] = {}
        stores = [(p.docs, p.exclude()) for p in self.parents] + [(self.docs, [])]
        for docs, exclude in stores:
            for doc_id, chunk_ids in docs.document_chunks(
                ids_or_sources, origin=origin, exclude=exclude
            ).items():
                out.setdefault(doc_id, []).extend(chunk_ids)
        return out

    def hashes(self, source: str | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        for parent in self.parents:
            out.update(parent.docs.hashes(source, exclude=parent.exclude()))
        out.update(self.docs.hashes(source))
        return out

    def count(self) -> int:
        return sum(p.live_count for p in self.parents) + self.docs.count()

    def abort(self) -> None:
        self._done = True
        try:
            self.docs.close()
            self._close_parents()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.segment_tmp, ignore_errors=True)

    def _install_format1(self, parent: _Parent) -> SegmentRef:
        """The format 1 version ``parent`` as a segment: its docstore and dense index linked (copied
        across file systems), its postings built from its texts."""
        assert self.parent is not None
        manifest = load_manifest(self.root, self.name, self.parent)
        segment = new_segment_id()
        directory = self.root / self.name / TMP_DIR / segment
        directory.mkdir()
        try:
            for file in ("docs.sqlite", "vectors.faiss"):
                try:
                    os.link(parent.path / file, directory / file)
                except OSError:
                    shutil.copy2(parent.path / file, directory / file)
            Postings.build(parent.docs.iter_texts()).save(directory / "postings")
            info = SegmentInfo(
                id=segment,
                created_at=manifest.created_at,
                documents=len(parent.ids),
                dimension=self.embedding.dimension,
                index_built=manifest.index_built,
                files=hash_tree(directory, skip=SEGMENT_INFO),
            )
            (directory / SEGMENT_INFO).write_text(info.model_dump_json(indent=2))
            digest = install_segment(self.root, self.name, directory, segment)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        log.info(
            "format 1 version installed as a segment", extra={"collection": self.name, "segment": segment}
        )
        return SegmentRef(id=segment, info_sha256=digest, documents=len(parent.ids))

    def commit(self) -> str:
        """Write the new segment (when anything was upserted), the deletions and the manifest, and
        publish. Returns the version id."""
        refs: list[SegmentRef] = []
        built: dict[str, IndexType] = {}
        for parent in self.parents:
            ref = parent.ref if parent.ref is not None else self._install_format1(parent)
            if parent.live_count == 0:
                continue  # every chunk deleted: the version no longer lists it
            deletions = (
                write_deletions(self.tmp, ref.id, np.array(sorted(parent.deleted), dtype=np.int64))
                if parent.deleted
                else None
            )
            refs.append(ref.model_copy(update={"deleted": len(parent.deleted), "deletions": deletions}))
        new_count = self.docs.count()
        self.docs.close()
        if new_count:
            info = build_segment(
                self.segment_tmp, self.segment, self.embedding.dimension, self.config, gpu=self.gpu
            )
            digest = install_segment(self.root, self.name, self.segment_tmp, self.segment)
            refs.append(SegmentRef(id=self.segment, info_sha256=digest, documents=new_count))
            built[self.segment] = info.index_built
        else:
            shutil.rmtree(self.segment_tmp, ignore_errors=True)
        self._close_parents()
        total = sum(r.documents - r.deleted for r in refs)
        largest = max(refs, key=lambda r: r.documents, default=None)
        index_built: IndexType = "flat"
        if largest is not None:
            index_built = built.get(largest.id) or self._segment_index_type(largest.id)
        manifest = Manifest(
            collection=self.name,
            version=self.version,
            parent=self.parent,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            embedding=self.embedding,
            index=self.config,
            index_built=index_built,
            counts={
                "documents": total,
                "segments": len(refs),
                "deleted": sum(r.deleted for r in refs),
            },
            sparse_tokenizer=TOKENIZER_NAME,
            files=hash_tree(self.tmp),
            segments=refs,
        )
        (self.tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        fsync_tree(self.tmp)
        versions = self.root / self.name / "versions"
        versions.mkdir(exist_ok=True)
        final = versions / self.version
        os.rename(self.tmp, final)
        fsync_path(versions)
        fsync_path(self.tmp.parent)
        publish(self.root, self.name, self.version)
        self._done = True
        log.info(
            "published",
            extra={
                "collection": self.name,
                "version": self.version,
                "documents": total,
                "segments": len(refs),
            },
        )
        return self.version

    def _segment_index_type(self, segment: str) -> IndexType:
        info = SegmentInfo.model_validate_json(
            (segment_path(self.root, self.name, segment) / SEGMENT_INFO).read_bytes()
        )
        return info.index_built


def publish(root: Path, name: str, version: str) -> None:
    """Point ``CURRENT`` at an existing, complete version, atomically."""
    check_name(name)
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"{version!r} is not a version id")
    if not (version_path(root, name, version) / "manifest.json").is_file():
        raise FileNotFoundError(f"version {version} of {name} is not complete")
    coll = root / name
    tmp = coll / f".{CURRENT}.{secrets.token_hex(4)}"
    with tmp.open("w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, coll / CURRENT)
    fsync_path(coll)


def read_extra(root: Path, name: str, file: str) -> bytes | None:
    """A writer's extra file from the current version, if any."""
    version = read_current(root, name)
    if version is None:
        return None
    path = version_path(root, name, version) / "extra" / file
    return path.read_bytes() if path.is_file() else None


def prune_versions(root: Path, name: str, *, keep: int = 3, grace_seconds: float = 3600.0) -> list[str]:
    """Delete old versions (never CURRENT, never the newest ``keep``, never one younger than the
    grace period, which readers may still be swapping away from) and stale temporary directories."""
    coll = root / name
    current = read_current(root, name)
    removed: list[str] = []
    now = time.time()
    versions_dir = coll / "versions"
    if versions_dir.is_dir():
        versions = sorted(
            (p for p in versions_dir.iterdir() if VERSION_RE.fullmatch(p.name)), key=lambda p: p.name
        )
        for path in versions[: max(0, len(versions) - keep)]:
            if path.name == current or now - path.stat().st_mtime < grace_seconds:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    # Segments no remaining version lists (replaced by compaction, or every chunk deleted), and
    # segments a killed writer installed without publishing a version, once the grace is over.
    segments_dir = coll / SEGMENTS
    if segments_dir.is_dir() and versions_dir.is_dir():
        listed: set[str] = set()
        for path in versions_dir.iterdir():
            if not VERSION_RE.fullmatch(path.name):
                continue
            try:
                manifest = Manifest.model_validate_json((path / "manifest.json").read_bytes())
            except (OSError, ValueError):
                # A version being deleted, or damaged: keep every segment rather than guess.
                listed = {p.name for p in segments_dir.iterdir()}
                break
            listed.update(ref.id for ref in manifest.segments)
        for path in segments_dir.iterdir():
            unlisted = SEGMENT_RE.fullmatch(path.name) and path.name not in listed
            if unlisted and now - path.stat().st_mtime >= grace_seconds:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"{SEGMENTS}/{path.name}")
    tmp_dir = coll / TMP_DIR
    if tmp_dir.is_dir():
        for path in tmp_dir.iterdir():
            if now - path.stat().st_mtime >= grace_seconds:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"{TMP_DIR}/{path.name}")
    for stray in coll.glob(f".{CURRENT}.*"):
        if now - stray.stat().st_mtime >= grace_seconds:
            stray.unlink(missing_ok=True)
    return removed
