"""Segments: the immutable parts a collection version is made of (format 2, issue 17).

    <root>/<collection>/segments/<segment>/   segment.json, docs.sqlite, vectors.faiss, postings/

A segment holds some chunks — their texts, metadata and vectors (``docs.sqlite``), its own dense
index and its BM25 postings — and never changes once written. A version lists the segments it is
made of and, per segment, the int ids deleted from it since (``deletions/<segment>.npy`` in the
version's directory); a commit writes one new segment with the chunks it changed and the
deletions it made, and every other segment is shared with the versions before it. ``segment.json``
records the sha256 of the segment's files; a version records the sha256 of each ``segment.json``,
so verifying a version checks every byte it serves.

A segment is written in ``<collection>/.tmp/`` and renamed into ``segments/`` whole, fsynced,
before any version names it: a writer killed at any moment leaves at most a stray directory, which
:func:`omnirag.index.store.prune_versions` removes once no version lists it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from omnirag.index import dense
from omnirag.index.docstore import DocStore
from omnirag.index.manifest import IndexConfig, IndexType, hash_tree, sha256_file
from omnirag.index.postings import Postings

log = logging.getLogger("omnirag.index.segment")

SEGMENTS = "segments"
SEGMENT_INFO = "segment.json"
SEGMENT_RE = re.compile(r"^s\d{8}T\d{12}Z-[0-9a-f]{6}$")
DELETIONS = "deletions"


class CorruptSegment(Exception):
    """A segment whose files do not match its segment.json (or the version's record of it)."""


class SegmentInfo(BaseModel):
    """segment.json: what a segment holds and the checksum of each of its files."""

    id: str
    created_at: str
    documents: int = Field(ge=0)
    dimension: int = Field(ge=1)
    index_built: IndexType
    files: dict[str, str] = Field(description="sha256 of every file but segment.json, by relative path.")


def new_segment_id() -> str:
    now = datetime.now(UTC)
    return "s" + now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z-" + secrets.token_hex(3)


def segment_path(root: Path, name: str, segment: str) -> Path:
    if not SEGMENT_RE.fullmatch(segment):
        raise ValueError(f"{segment!r} is not a segment id")
    return root / name / SEGMENTS / segment


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for file in filenames:
            fsync_path(Path(dirpath) / file)
        fsync_path(Path(dirpath))


def build_segment(
    directory: Path, segment: str, dimension: int, config: IndexConfig, *, gpu: bool = False
) -> SegmentInfo:
    """Build the dense index and the postings of the chunks in ``directory/docs.sqlite`` and write
    ``segment.json`` beside them. The directory is not moved; see :func:`install_segment`."""
    docs = DocStore.open_readonly(directory / "docs.sqlite", dimension)
    try:
        total = docs.count()
        index, built = dense.build(docs.iter_vectors(), dimension, config, total, gpu=gpu)
        dense.save(index, directory / "vectors.faiss")
        # Rows in int id order, as the docstore's vectors: postings.ids is sorted, which makes it
        # the segment's membership test too.
        Postings.build(docs.iter_texts()).save(directory / "postings")
    finally:
        docs.close()
    info = SegmentInfo(
        id=segment,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        documents=total,
        dimension=dimension,
        index_built=built,
        files=hash_tree(directory, skip=SEGMENT_INFO),
    )
    (directory / SEGMENT_INFO).write_text(info.model_dump_json(indent=2))
    return info


def install_segment(root: Path, name: str, directory: Path, segment: str) -> str:
    """fsync a built segment directory and rename it into ``segments/``; returns the sha256 of its
    ``segment.json`` (what a version records)."""
    fsync_tree(directory)
    segments = root / name / SEGMENTS
    segments.mkdir(exist_ok=True)
    final = segment_path(root, name, segment)
    os.rename(directory, final)
    # The pruning grace period counts from now, not from when its files were written.
    os.utime(final)
    fsync_path(segments)
    fsync_path(directory.parent)
    return sha256_file(final / SEGMENT_INFO)


@dataclass(eq=False)
class Segment:
    """A segment opened read-only: its docstore, dense index and postings. Shared by every loaded
    version that lists it (see :class:`SegmentCache`)."""

    id: str
    path: Path
    info: SegmentInfo
    docs: DocStore
    index: Any
    postings: Postings

    @property
    def ids(self) -> np.ndarray:
        """The segment's int ids, sorted."""
        return self.postings.ids

    @property
    def count(self) -> int:
        return self.info.documents

    @property
    def index_built(self) -> IndexType:
        return self.info.index_built

    @classmethod
    def open(cls, path: Path, *, info_sha256: str | None = None, verify: bool = True) -> Segment:
        """Open ``path``; with ``verify`` its segment.json must have ``info_sha256`` (when given)
        and every file its recorded sha256."""
        try:
            if verify and info_sha256 is not None and sha256_file(path / SEGMENT_INFO) != info_sha256:
                raise CorruptSegment(f"{path}: segment.json is not the one the version recorded")
            info = SegmentInfo.model_validate_json((path / SEGMENT_INFO).read_bytes())
        except (OSError, ValueError) as exc:
            raise CorruptSegment(f"{path}: unreadable segment.json: {exc}") from exc
        if verify:
            actual = hash_tree(path, skip=SEGMENT_INFO)
            if actual != info.files:
                bad = sorted(set(actual.items()) ^ set(info.files.items()))
                raise CorruptSegment(f"{path}: files do not match segment.json: {[p for p, _ in bad][:5]}")
        postings = Postings.load(path / "postings")
        if len(postings.ids) != info.documents:
            raise CorruptSegment(f"{path}: {len(postings.ids)} postings rows for {info.documents} chunks")
        index = dense.load(path / "vectors.faiss")
        docs = DocStore.open_readonly(path / "docs.sqlite", info.dimension)
        return cls(path.name, path, info, docs, index, postings)

    def close(self) -> None:
        self.docs.close()

    def owns(self, int_ids: np.ndarray) -> np.ndarray:
        """Which of ``int_ids`` are chunks of this segment (deleted or not)."""
        ids = self.ids
        if len(ids) == 0:
            return np.zeros(len(int_ids), dtype=bool)
        at = np.minimum(np.searchsorted(ids, int_ids), len(ids) - 1)
        found: np.ndarray = ids[at] == int_ids
        return found


def write_deletions(directory: Path, segment: str, deleted: np.ndarray) -> str:
    """``deletions/<segment>.npy`` (sorted int64) in a version being written; its relative path."""
    (directory / DELETIONS).mkdir(exist_ok=True)
    relative = f"{DELETIONS}/{segment}.npy"
    np.save(directory / relative, np.unique(np.asarray(deleted, dtype=np.int64)), allow_pickle=False)
    return relative


def read_deletions(version_dir: Path, relative: str | None) -> np.ndarray:
    if relative is None:
        return np.zeros(0, dtype=np.int64)
    folder, _, file = relative.partition("/")
    if folder != DELETIONS or not file.endswith(".npy") or not SEGMENT_RE.fullmatch(file[:-4]):
        raise ValueError(f"{relative!r} is not a deletions file")
    deleted: np.ndarray = np.load(version_dir / relative, allow_pickle=False)
    if deleted.dtype != np.int64 or deleted.ndim != 1:
        raise ValueError(f"{version_dir / relative}: not a list of int ids")
    return deleted


def remove_segment_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
