"""docs.sqlite: id, text, metadata (JSON), source, content hash and the float32 vector.

The vector is kept here (as little-endian float32 bytes) so that every version's FAISS index can be
rebuilt exactly, whatever its type: an IVF-PQ index cannot give its vectors back losslessly.
Readers open the file immutable and read-only: no journal is created, so a read-only volume works.
SQL is built only from "?" placeholders and the compiled filter (whose values are parameters), hence
the S608 exemptions below.

Documents. A document is the group of chunks that share a document id (``metadata.doc_id``), and
every chunk records where its document came from, in flat metadata fields that search filters can
select: ``origin`` ("kb" or "upload"); for a knowledge base ``kb`` and ``origin_source`` (which of
its sources); for an upload ``origin_key``, ``origin_principal`` and ``ingest_job``; and
``indexed_at``, the time of the run or upload that wrote the document. Chunks written before origins
existed have none of these: a chunk with an ``ingest_job`` field is an upload, any other belongs to
the knowledge base, and its document id is the one its chunk ids already embed, the hash of its
source (:func:`document_id`). :func:`origin_of` and ``ORIGIN_SQL`` are that one rule, in Python and
in SQL.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnirag.index.filters import Scalar
from omnirag.index.ids import int_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    int_id INTEGER NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    source TEXT,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_source ON docs(source);
"""
# A chunk written again replaces the one with its id (upserts, and rows copied between segments).
UPSERT_SQL = (
    "INSERT INTO docs(id, int_id, text, metadata, source, content_hash, vector) "
    "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET text=excluded.text, "
    "metadata=excluded.metadata, source=excluded.source, content_hash=excluded.content_hash, "
    "vector=excluded.vector"
)


ORIGIN_KB = "kb"
ORIGIN_UPLOAD = "upload"
# The fields a document's origin and write time live in; they say nothing about its content, so
# the indexer leaves them out of content hashes (a re-stamped chunk is not embedded again).
ORIGIN_FIELDS = ("origin", "origin_source", "origin_key", "origin_principal", "doc_id", "indexed_at")
MAX_PAGE = 500
MAX_CURSOR_CHARS = 4096

# SQL twins of origin_of and doc_id_of; constant text, no values in them.
ORIGIN_SQL = (
    "COALESCE(json_extract(metadata, '$.origin'), "
    "CASE WHEN json_extract(metadata, '$.ingest_job') IS NOT NULL THEN 'upload' ELSE 'kb' END)"
)
DOC_ID_SQL = "COALESCE(json_extract(metadata, '$.doc_id'), omnirag_legacy_doc_id(source))"
# A segment shared by several versions is read with the chunks a version deleted left out: their
# int ids go as one JSON parameter (constant SQL; SQLite builds a temporary index for NOT IN).
LIVE_SQL = "int_id NOT IN (SELECT value FROM json_each(?))"


def _live(exclude: Sequence[int] | np.ndarray | None) -> tuple[str, list[Any]]:
    """(an SQL condition, its parameters) that leaves ``exclude``'s int ids out; ("1", []) for none."""
    if exclude is None or len(exclude) == 0:
        return "1", []
    return LIVE_SQL, [json.dumps([int(i) for i in exclude])]


def document_id(*parts: str) -> str:
    """16 hex digits of sha256 over ``parts``, each followed by NUL: URL-safe, stable, and for one
    part (a source) the same hash the indexer has always put in its chunk ids."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _legacy_doc_id(source: str | None) -> str:
    return document_id(source or "")


def origin_of(meta: dict[str, Any]) -> str:
    """ "kb" or "upload"; chunks from before origins were recorded follow the legacy rule."""
    origin = meta.get("origin")
    if origin is not None:
        return str(origin)
    return ORIGIN_UPLOAD if meta.get("ingest_job") is not None else ORIGIN_KB


def doc_id_of(meta: dict[str, Any]) -> str:
    doc_id = meta.get("doc_id")
    if doc_id is not None:
        return str(doc_id)
    src = meta.get("source")
    return _legacy_doc_id(str(src) if src is not None else None)


def origin_details(meta: dict[str, Any]) -> dict[str, Any]:
    """The origin of a document as its chunk's metadata records it (None where unknown)."""
    kind = origin_of(meta)
    if kind == ORIGIN_UPLOAD:
        return {
            "kind": kind,
            "key": meta.get("origin_key"),
            "principal": meta.get("origin_principal"),
            "job_id": meta.get("ingest_job"),
        }
    return {"kind": kind, "kb": meta.get("kb"), "source": meta.get("origin_source")}


def encode_cursor(source: str, doc_id: str) -> str:
    raw = json.dumps([source, doc_id], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The position a cursor stands for; ValueError for anything this module did not write."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise ValueError("malformed cursor") from exc
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValueError("malformed cursor")
    return value[0], value[1]


@dataclass
class DocumentInfo:
    """One document of a collection: its chunks, grouped."""

    id: str
    source: str
    title: str | None
    origin: dict[str, Any]
    chunks: int
    indexed_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "title": self.title,
            "origin": self.origin,
            "chunks": self.chunks,
            "indexed_at": self.indexed_at,
        }


@dataclass(frozen=True)
class DocumentRow:
    """What paging needs of one document; the rest is read from its first chunk per page."""

    source: str
    id: str
    first_chunk: str
    chunks: int
    indexed_at: float | None
    origin: str
    principal: str | None


@dataclass
class DocumentPage:
    documents: list[DocumentInfo]
    total: int
    next_cursor: str | None


@dataclass(frozen=True)
class ChunkRow:
    """One stored chunk as a writer sees it when deciding what to embed again: no text, no vector."""

    id: str
    metadata: dict[str, Any]
    content_hash: str


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None
    content_hash: str = ""

    @property
    def source(self) -> str | None:
        src = self.metadata.get("source")
        return str(src) if src is not None else None


class DocStore:
    def __init__(self, conn: sqlite3.Connection, dimension: int) -> None:
        self.conn = conn
        self.dimension = dimension
        # Legacy chunks carry no doc_id: their document id is the hash of their source.
        conn.create_function("omnirag_legacy_doc_id", 1, _legacy_doc_id, deterministic=True)

    @classmethod
    def create(cls, path: Path, dimension: int) -> DocStore:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.executescript(SCHEMA)
        return cls(conn, dimension)

    @classmethod
    def open_readonly(cls, path: Path, dimension: int) -> DocStore:
        uri = f"file:{path.as_posix()}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return cls(conn, dimension)

    def close(self) -> None:
        self.conn.close()

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM docs").fetchone()[0])

    def upsert(self, docs: Sequence[Document]) -> None:
        rows = []
        for d in docs:
            if d.vector is None:
                raise ValueError(f"document {d.id!r} has no vector")
            vec = np.asarray(d.vector, dtype="<f4").reshape(-1)
            if vec.shape[0] != self.dimension:
                raise ValueError(
                    f"document {d.id!r}: vector of {vec.shape[0]} dims, index has {self.dimension}"
                )
            rows.append(
                (
                    d.id,
                    int_id(d.id),
                    d.text,
                    json.dumps(d.metadata, ensure_ascii=False),
                    d.source,
                    d.content_hash,
                    vec.tobytes(),
                )
            )
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                UPSERT_SQL,
                rows,
            )

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored here."""
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            found.update(
                r[0]
                for r in self.conn.execute(
                    f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(part))})",  # noqa: S608
                    part,
                )
            )
        return found

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        deleted = 0
        with self.conn:
            self.conn.execute("BEGIN")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cur = self.conn.execute(f"DELETE FROM docs WHERE id IN ({','.join('?' * len(chunk))})", chunk)  # noqa: S608
                deleted += cur.rowcount
        return deleted

    def set_metadata_field(self, ids: Sequence[str], key: str, value: str | int | float | bool) -> None:
        """Set one metadata field of existing documents, leaving text and vector as they are."""
        path = f'$."{key}"'
        with self.conn:
            self.conn.execute("BEGIN")
            rows = [(path, value, i) for i in ids]
            self.conn.executemany("UPDATE docs SET metadata = json_set(metadata, ?, ?) WHERE id = ?", rows)

    def set_metadata_fields(self, ids: Sequence[str], fields: dict[str, Any]) -> None:
        """Set several metadata fields of existing documents at once (text and vector unchanged)."""
        if not fields or not ids:
            return
        paths: list[Any] = []
        for key, value in fields.items():
            # json() keeps None a JSON null rather than SQL NULL; strings and numbers go as they are.
            paths.extend((f'$."{key}"', json.dumps(value)))
        setters = ", ".join("?, json(?)" for _ in fields)
        sql = f"UPDATE docs SET metadata = json_set(metadata, {setters}) WHERE id = ?"  # noqa: S608
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(sql, [(*paths, i) for i in ids])

    # --- documents ---------------------------------------------------------------------------------

    def document_rows(
        self, doc_id: str | None = None, *, exclude: Sequence[int] | np.ndarray | None = None
    ) -> list[DocumentRow]:
        """Every document (or the one with ``doc_id``), ordered by (source, id): one scan of the
        chunks' metadata, grouped in SQL, the chunks ``exclude`` names left out. A reader of an
        immutable version computes this once and pages over it (see Collection)."""
        live, params = _live(exclude)
        where = f"WHERE {live}"
        if doc_id is not None:
            where += f" AND {DOC_ID_SQL} = ?"
            params.append(doc_id)
        sql = (
            "SELECT doc_id, MIN(src), MIN(id), count(*), MAX(at), MIN(origin), MIN(principal) FROM ("  # noqa: S608
            f"SELECT {DOC_ID_SQL} AS doc_id, COALESCE(source, '') AS src, id, "
            f"json_extract(metadata, '$.indexed_at') AS at, {ORIGIN_SQL} AS origin, "
            f"json_extract(metadata, '$.origin_principal') AS principal FROM docs {where}"
            ") GROUP BY doc_id"
        )
        rows = [
            DocumentRow(
                source=src,
                id=str(doc_id),
                first_chunk=first,
                chunks=int(n),
                indexed_at=float(at) if isinstance(at, int | float) else None,
                origin=str(origin),
                principal=principal if isinstance(principal, str) else None,
            )
            for doc_id, src, first, n, at, origin, principal in self.conn.execute(sql, params)
        ]
        # Python's order, which the cursor's bisect relies on (SQLite's BINARY order is the same for
        # UTF-8, but nothing here should hang on that).
        rows.sort(key=lambda r: (r.source, r.id))
        return rows

    def documents(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        origin: str | None = None,
        principal: str | None = None,
        rows: Sequence[DocumentRow] | None = None,
    ) -> DocumentPage:
        """A page of documents ordered by source (then id), with the total that match. ``rows`` is
        :meth:`document_rows` when the caller keeps it (an immutable version); without it, it is
        computed here. ValueError for a cursor this module did not write."""
        every = self.document_rows() if rows is None else rows
        return page_documents(
            every, self.metadata_of, limit=limit, cursor=cursor, origin=origin, principal=principal
        )

    def metadata_of(
        self, chunk_ids: Sequence[str], *, exclude: Sequence[int] | np.ndarray | None = None
    ) -> dict[str, dict[str, Any]]:
        """Chunk id → metadata, for those of ``chunk_ids`` stored here (and not excluded)."""
        live, live_params = _live(exclude)
        metas: dict[str, dict[str, Any]] = {}
        for start in range(0, len(chunk_ids), 500):
            part = list(chunk_ids[start : start + 500])
            for cid, meta in self.conn.execute(
                f"SELECT id, metadata FROM docs WHERE id IN ({','.join('?' * len(part))}) AND {live}",  # noqa: S608
                [*part, *live_params],
            ):
                metas[cid] = json.loads(meta)
        return metas

    def document(self, doc_id: str, *, rows: Sequence[DocumentRow] | None = None) -> DocumentInfo | None:
        found = [r for r in rows if r.id == doc_id] if rows is not None else self.document_rows(doc_id)
        return describe(found[:1], self.metadata_of)[0] if found else None

    def document_chunks(
        self,
        ids_or_sources: Sequence[str],
        *,
        origin: str | None = None,
        exclude: Sequence[int] | np.ndarray | None = None,
    ) -> dict[str, list[str]]:
        """Document id → its chunk ids, for the documents named by id or by source (a source names
        every document that has it), optionally only those of one origin."""
        names = list(dict.fromkeys(ids_or_sources))
        live, live_params = _live(exclude)
        out: dict[str, list[str]] = {}
        for start in range(0, len(names), 400):
            part = names[start : start + 400]
            marks = ",".join("?" * len(part))
            sql = (
                f"SELECT {DOC_ID_SQL}, id FROM docs "  # noqa: S608
                f"WHERE ({DOC_ID_SQL} IN ({marks}) OR source IN ({marks})) AND {live}"
            )
            params: list[Any] = [*part, *part, *live_params]
            if origin is not None:
                sql += f" AND {ORIGIN_SQL} = ?"
                params.append(origin)
            for doc_id, cid in self.conn.execute(sql, params):
                out.setdefault(str(doc_id), []).append(cid)
        return out

    def hashes(
        self, source: str | None = None, *, exclude: Sequence[int] | np.ndarray | None = None
    ) -> dict[str, str]:
        """id → content hash, for incremental indexing (optionally of one source)."""
        live, params = _live(exclude)
        if source is None:
            rows = self.conn.execute(f"SELECT id, content_hash FROM docs WHERE {live}", params)  # noqa: S608
        else:
            rows = self.conn.execute(
                f"SELECT id, content_hash FROM docs WHERE source = ? AND {live}",  # noqa: S608
                [source, *params],
            )
        return dict(rows.fetchall())

    def iter_chunks(
        self, batch: int = 8192, *, exclude: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[ChunkRow]:
        """Every chunk's id, metadata and content hash, a batch of rows at a time."""
        live, params = _live(exclude)
        cur = self.conn.execute(f"SELECT id, metadata, content_hash FROM docs WHERE {live}", params)  # noqa: S608
        while rows := cur.fetchmany(batch):
            for cid, meta_json, chash in rows:
                yield ChunkRow(cid, json.loads(meta_json), chash)

    def iter_vectors(self, batch: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(int ids, vectors) in int_id order, a batch at a time."""
        cur = self.conn.execute("SELECT int_id, vector FROM docs ORDER BY int_id")
        while rows := cur.fetchmany(batch):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dimension)
            yield ids, vecs.astype(np.float32, copy=False)

    def texts(
        self, *, exclude: Sequence[int] | np.ndarray | None = None
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every chunk: id → (text, metadata)."""
        live, params = _live(exclude)
        rows = self.conn.execute(f"SELECT id, text, metadata FROM docs WHERE {live}", params)  # noqa: S608
        return {cid: (text, json.loads(meta)) for cid, text, meta in rows}

    def iter_texts(self) -> Iterator[tuple[int, str]]:
        yield from self.conn.execute("SELECT int_id, text FROM docs ORDER BY int_id")

    def vectors_for(self, int_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found_ids: list[int] = []
        blobs: list[bytes] = []
        for start in range(0, len(int_ids), 900):
            chunk = [int(i) for i in int_ids[start : start + 900]]
            for iid, blob in self.conn.execute(
                f"SELECT int_id, vector FROM docs WHERE int_id IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk,
            ):
                found_ids.append(iid)
                blobs.append(blob)
        vecs = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.dimension)
        return np.array(found_ids, dtype=np.int64), vecs.astype(np.float32, copy=False)

    def fetch(self, int_ids: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        """int id → (id, text, metadata)."""
        out: dict[int, tuple[str, str, dict[str, Any]]] = {}
        ids = [int(i) for i in int_ids]
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            for iid, sid, text, meta in self.conn.execute(
                f"SELECT int_id, id, text, metadata FROM docs WHERE int_id IN ({','.join('?' * len(chunk))})",  # noqa: S608
                chunk,
            ):
                out[iid] = (sid, text, json.loads(meta))
        return out

    def matching(
        self,
        where: str,
        params: Sequence[Scalar],
        limit: int | None = None,
        *,
        exclude: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        live, live_params = _live(exclude)
        # where is compiled by filters.compile_filter
        sql = f"SELECT int_id FROM docs WHERE ({where}) AND {live}"  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return np.fromiter((r[0] for r in self.conn.execute(sql, [*params, *live_params])), dtype=np.int64)

    def rows_for(self, int_ids: Sequence[int] | np.ndarray) -> list[tuple[Any, ...]]:
        """Whole rows (id, int_id, text, metadata, source, content_hash, vector) of ``int_ids``, to
        copy chunks into another store."""
        out: list[tuple[Any, ...]] = []
        ids = [int(i) for i in int_ids]
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            out.extend(
                self.conn.execute(
                    "SELECT id, int_id, text, metadata, source, content_hash, vector FROM docs "  # noqa: S608
                    f"WHERE int_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        return out

    def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows as :meth:`rows_for` gives them, inserted (or replacing those with the same id)."""
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                UPSERT_SQL,
                rows,
            )


MetadataOf = Callable[[Sequence[str]], dict[str, dict[str, Any]]]


def describe(rows: Sequence[DocumentRow], metadata_of: MetadataOf) -> list[DocumentInfo]:
    """Title and origin details of each document, from its first chunk (by primary key)."""
    metas = metadata_of([r.first_chunk for r in rows])
    out = []
    for r in rows:
        meta = metas.get(r.first_chunk, {})
        title = meta.get("title")
        out.append(
            DocumentInfo(
                id=r.id,
                source=r.source,
                title=str(title) if title is not None else None,
                origin=origin_details(meta),
                chunks=r.chunks,
                indexed_at=r.indexed_at,
            )
        )
    return out


def page_documents(
    every: Sequence[DocumentRow],
    metadata_of: MetadataOf,
    *,
    limit: int = 50,
    cursor: str | None = None,
    origin: str | None = None,
    principal: str | None = None,
) -> DocumentPage:
    """A page of ``every`` (ordered by (source, id)) after ``cursor``, with the total that match."""
    after = decode_cursor(cursor) if cursor else None
    limit = max(1, min(int(limit), MAX_PAGE))
    matching = [
        r
        for r in every
        if (origin is None or r.origin == origin) and (principal is None or r.principal == principal)
    ]
    start = bisect.bisect_right(matching, after, key=lambda r: (r.source, r.id)) if after else 0
    chosen = matching[start : start + limit]
    more = start + limit < len(matching)
    next_cursor = encode_cursor(chosen[-1].source, chosen[-1].id) if more and chosen else None
    return DocumentPage(describe(chosen, metadata_of), len(matching), next_cursor)


def merge_document_rows(parts: Iterable[Sequence[DocumentRow]]) -> list[DocumentRow]:
    """One row per document from the rows of several stores (a document's chunks may live in several
    segments): chunks added up, the smallest source and first chunk, the latest write, ordered by
    (source, id) as paging needs."""
    merged: dict[str, DocumentRow] = {}
    for rows in parts:
        for r in rows:
            seen = merged.get(r.id)
            if seen is None:
                merged[r.id] = r
                continue
            times = [t for t in (seen.indexed_at, r.indexed_at) if t is not None]
            principals = [p for p in (seen.principal, r.principal) if p is not None]
            merged[r.id] = DocumentRow(
                source=min(seen.source, r.source),
                id=r.id,
                first_chunk=min(seen.first_chunk, r.first_chunk),
                chunks=seen.chunks + r.chunks,
                indexed_at=max(times) if times else None,
                origin=min(seen.origin, r.origin),
                principal=min(principals) if principals else None,
            )
    return sorted(merged.values(), key=lambda r: (r.source, r.id))
