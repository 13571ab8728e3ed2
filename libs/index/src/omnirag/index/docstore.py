"""docs.sqlite: id, text, metadata (JSON), source, content hash and the float32 vector.

The vector is kept here (as little-endian float32 bytes) so that every version's FAISS index can be
rebuilt exactly, whatever its type: an IVF-PQ index cannot give its vectors back losslessly.
Readers open the file immutable and read-only: no journal is created, so a read-only volume works.
SQL is built only from "?" placeholders and the compiled filter (whose values are parameters), hence
the S608 exemptions below.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
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
                "INSERT INTO docs(id, int_id, text, metadata, source, content_hash, vector) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET text=excluded.text, "
                "metadata=excluded.metadata, source=excluded.source, content_hash=excluded.content_hash, "
                "vector=excluded.vector",
                rows,
            )

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

    def hashes(self, source: str | None = None) -> dict[str, str]:
        """id → content hash, for incremental indexing (optionally of one source)."""
        if source is None:
            rows = self.conn.execute("SELECT id, content_hash FROM docs")
        else:
            rows = self.conn.execute("SELECT id, content_hash FROM docs WHERE source = ?", (source,))
        return dict(rows.fetchall())

    def iter_vectors(self, batch: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(int ids, vectors) in int_id order, a batch at a time."""
        cur = self.conn.execute("SELECT int_id, vector FROM docs ORDER BY int_id")
        while rows := cur.fetchmany(batch):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dimension)
            yield ids, vecs.astype(np.float32, copy=False)

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

    def matching(self, where: str, params: Sequence[Scalar], limit: int | None = None) -> np.ndarray:
        sql = f"SELECT int_id FROM docs WHERE {where}"  # where is compiled by filters.compile_filter  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return np.fromiter((r[0] for r in self.conn.execute(sql, list(params))), dtype=np.int64)
