"""omnirag.index: the on-disk collection format, written by the indexer and read by the retriever.

    <root>/<collection>/CURRENT                 the version being served (replaced by rename)
    <root>/<collection>/versions/<version>/     manifest.json, vectors.faiss, docs.sqlite, sparse/

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
