"""omnirag.index: the on-disk collection format, written by the indexer and read by the retriever.

    <root>/<collection>/CURRENT                 the version being served (replaced by rename)
    <root>/<collection>/versions/<version>/     manifest.json (the segments it lists), deletions/
    <root>/<collection>/segments/<segment>/     segment.json, docs.sqlite, vectors.faiss, postings/

A commit writes one new segment and the deletions it makes; segments are shared between versions
and merged by compaction (omnirag.index.compaction). Format 1 versions (one directory holding
everything) are still read. See DESIGN.md, "Index format".

No pickle anywhere: FAISS's own binary format, SQLite, JSON and ``.npy`` without object arrays.
"""

from omnirag.index.collection import Collection, CorruptVersion, Hit, ModeUnavailable
from omnirag.index.docstore import ChunkRow, Document
from omnirag.index.filters import FilterError
from omnirag.index.manifest import EmbeddingInfo, IndexConfig, Manifest
from omnirag.index.store import (
    VersionWriter,
    list_collections,
    load_manifest,
    open_current,
    prune_versions,
    publish,
    read_current,
    read_manifest,
)

__all__ = [
    "ChunkRow",
    "Collection",
    "CorruptVersion",
    "Document",
    "EmbeddingInfo",
    "FilterError",
    "Hit",
    "IndexConfig",
    "Manifest",
    "ModeUnavailable",
    "VersionWriter",
    "list_collections",
    "load_manifest",
    "open_current",
    "prune_versions",
    "publish",
    "read_current",
    "read_manifest",
]
