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
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omnirag.core.names import check_collection_name as check_name
from omnirag.core.names import is_collection_name
from omnirag.index import dense
from omnirag.index.collection import Collection
from omnirag.index.docstore import ChunkRow, DocStore, Document
from omnirag.index.manifest import EmbeddingInfo, IndexConfig, Manifest, hash_tree
from omnirag.index.sparse import TOKENIZER_NAME, SparseIndex

log = logging.getLogger("omnirag.index.store")

# The writer's own files in extra/ (e.g. crawl.json): a plain name, no path.
EXTRA_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,62}$")
VERSION_RE = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")
CURRENT = "CURRENT"
TMP_DIR = ".tmp"


def new_version_id() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z-" + secrets.token_hex(3)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


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


def open_current(root: Path, name: str, *, verify: bool = True) -> Collection | None:
    version = read_current(root, name)
    if version is None:
        return None
    return Collection.open(version_path(root, name, version), verify=verify)


class VersionWriter:
    """Builds the next version of one collection from its current one (or from nothing).

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
        self.parent = read_current(self.root, name) if base == "current" else base
        parent_dir = version_path(self.root, name, self.parent) if self.parent else None
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
        self.tmp.mkdir(parents=True)
        db = self.tmp / "docs.sqlite"
        try:
            if parent_dir is not None:
                src = sqlite3.connect(
                    f"file:{(parent_dir / 'docs.sqlite').as_posix()}?mode=ro&immutable=1", uri=True
                )
                dst = sqlite3.connect(db)
                try:
                    with dst:
                        src.backup(dst)
                finally:
                    src.close()
                    dst.close()
            self.docs = DocStore.create(db, embedding.dimension)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self._done = False

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def upsert(self, docs: Sequence[Document]) -> None:
        self.docs.upsert(docs)

    def put_extra(self, name: str, data: bytes) -> None:
        """Store a small file of the writer's own (e.g. crawl state) in ``extra/``, versioned and
        checksummed with everything else; readers of the index ignore it."""
        if not EXTRA_NAME_RE.fullmatch(name) or ".." in name:
            raise ValueError(f"bad extra file name {name!r}")
        (self.tmp / "extra").mkdir(exist_ok=True)
        (self.tmp / "extra" / name).write_bytes(data)

    def delete(self, ids: Sequence[str]) -> int:
        return self.docs.delete(ids)

    def retag(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        """Bring chunks' metadata up to date without embedding them again (text and vector stay)."""
        self.docs.set_metadata_fields(ids, fields)

    def chunks(self) -> Iterator[ChunkRow]:
        """Every chunk of the version being built (id, metadata, content hash)."""
        return self.docs.iter_chunks()

    def document_chunks(
        self, ids_or_sources: Sequence[str], *, origin: str | None = None
    ) -> dict[str, list[str]]:
        """Document id → chunk ids of the documents named by id or source (see DocStore)."""
        return self.docs.document_chunks(ids_or_sources, origin=origin)

    def hashes(self, source: str | None = None) -> dict[str, str]:
        return self.docs.hashes(source)

    def count(self) -> int:
        return self.docs.count()

    def abort(self) -> None:
        self._done = True
        try:
            self.docs.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self) -> str:
        """Build the indexes, write the manifest, and publish. Returns the version id."""
        total = self.docs.count()
        index, built = dense.build(
            self.docs.iter_vectors(), self.embedding.dimension, self.config, total, gpu=self.gpu
        )
        dense.save(index, self.tmp / "vectors.faiss")
        SparseIndex.build(self.docs.iter_texts()).save(self.tmp / "sparse")
        self.docs.close()
        manifest = Manifest(
            collection=self.name,
            version=self.version,
            parent=self.parent,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            embedding=self.embedding,
            index=self.config,
            index_built=built,
            counts={"documents": total},
            sparse_tokenizer=TOKENIZER_NAME,
            files=hash_tree(self.tmp),
        )
        (self.tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        _fsync_tree(self.tmp)
        versions = self.root / self.name / "versions"
        versions.mkdir(exist_ok=True)
        final = versions / self.version
        os.rename(self.tmp, final)
        _fsync_path(versions)
        _fsync_path(self.tmp.parent)
        publish(self.root, self.name, self.version)
        self._done = True
        log.info("published", extra={"collection": self.name, "version": self.version, "documents": total})
        return self.version


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
    _fsync_path(coll)


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
