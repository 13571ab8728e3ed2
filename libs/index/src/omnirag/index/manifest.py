"""manifest.json: what a version holds and how to check it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

# 1: one version, one directory (docs.sqlite, vectors.faiss, sparse/). 2: a version lists segments
# shared between versions, with deletions per segment (omnirag.index.segment). Both are read.
FORMAT_VERSION = 2
IndexType = Literal["flat", "hnsw", "ivfpq"]


class EmbeddingInfo(BaseModel):
    """The embedder a version was built with; the retriever refuses to serve it with another."""

    model: str
    dimension: int = Field(ge=1)
    normalize: bool = True
    languages: list[str] = Field(default_factory=list)


class IndexConfig(BaseModel):
    type: IndexType = "flat"
    metric: Literal["ip", "l2"] = Field("ip", description="ip = cosine on normalized vectors.")
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=8)
    ivf_nlist: int = Field(1024, ge=1, description="Lowered automatically for small collections.")
    ivf_nprobe: int = Field(32, ge=1)
    pq_m: int = Field(48, ge=1, description="Sub-quantizers; must divide the dimension.")


class SegmentRef(BaseModel):
    """One segment of a version: its id, the sha256 of its segment.json, its chunks and the int ids
    deleted from it (a file of the version's own)."""

    id: str
    info_sha256: str
    documents: int = Field(ge=0)
    deleted: int = Field(0, ge=0)
    deletions: str | None = Field(None, description="deletions/<segment>.npy in the version's directory.")


class Manifest(BaseModel):
    format_version: int = Field(FORMAT_VERSION, ge=1, le=FORMAT_VERSION)
    collection: str
    version: str
    parent: str | None = None
    created_at: str
    embedding: EmbeddingInfo
    index: IndexConfig
    index_built: IndexType = Field(description="The type really built (ivfpq falls back to flat when small).")
    counts: dict[str, int]
    sparse_tokenizer: str
    files: dict[str, str] = Field(description="sha256 of every file, by path relative to the version.")
    segments: list[SegmentRef] = Field(
        default_factory=list, description="Format 2: the segments this version is made of, oldest first."
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path, skip: str = "manifest.json") -> dict[str, str]:
    """sha256 of every file under ``root`` but the top-level ``skip`` (the file that records them)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in sorted(filenames):
            if name == skip and Path(dirpath) == root:
                continue
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = sha256_file(path)
    return dict(sorted(out.items()))
