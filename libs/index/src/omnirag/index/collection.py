"""A loaded collection version, read-only: dense, sparse and hybrid search with metadata filters.

Filters are applied inside the search, not after it: the matching ids are found in SQLite first and
FAISS (or, for selective filters over approximate indexes, an exact scan of those vectors) and BM25
only consider them, so a filter matching 1% of the documents still returns k hits when k exist.

Hybrid fusion takes the union of both parts' candidates and scores every candidate by both, exactly.
Dense scores are min-max normalized over the candidates; BM25 scores are divided by the query's
ceiling (the sum of each query term's best score), so a hit that shares only common words with the
query does not count as a perfect match. The two are mixed with weights; the dense weight drops to
0 when the query's language is not one the embedding model covers (MiniLM is English-only: on
Chinese its vectors are close to noise), so a weak dense ranking cannot drag a strong BM25 ranking
down; dense then only orders what BM25 does not find at all.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from omnirag.index import dense
from omnirag.index.docstore import DocStore, DocumentInfo, DocumentPage, DocumentRow
from omnirag.index.filters import compile_filter
from omnirag.index.manifest import Manifest, hash_tree
from omnirag.index.sparse import SparseIndex, cjk_share

log = logging.getLogger("omnirag.index.collection")

Mode = Literal["dense", "sparse", "hybrid"]
# Below this many matching documents an approximate index is bypassed by an exact scan.
EXACT_SCAN_MAX = 20000
CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})
DENSE_WEIGHT = 0.5


class CorruptVersion(Exception):
    """A version whose files do not match its manifest."""


class ModeUnavailable(ValueError):
    pass


@dataclass
class Hit:
    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    dense_score: float | None = None
    sparse_score: float | None = None
    int_id: int = field(default=0, repr=False)


def dense_weight(query: str | None, languages: list[str]) -> float:
    """How much the dense ranking counts in hybrid search for this query."""
    if not query or not languages:
        return DENSE_WEIGHT
    langs = {lang.lower().split("-")[0] for lang in languages}
    if "multilingual" in langs:
        return DENSE_WEIGHT
    cjk = cjk_share(query) >= 0.5
    if cjk and not langs & CJK_LANGUAGES:
        return 0.0
    if not cjk and langs <= CJK_LANGUAGES:
        return 0.0
    return DENSE_WEIGHT


class Collection:
    def __init__(
        self, path: Path, manifest: Manifest, index: Any, sparse: SparseIndex, docs: DocStore
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.sparse = sparse
        self.docs = docs
        self._doc_rows: list[DocumentRow] | None = None
        self._doc_rows_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.manifest.collection

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def count(self) -> int:
        return self.manifest.counts.get("documents", 0)

    @classmethod
    def open(cls, path: Path, *, verify: bool = True) -> Collection:
        """Load a version directory; with ``verify`` every file's sha256 must match the manifest."""
        try:
            manifest = Manifest.model_validate(json.loads((path / "manifest.json").read_text()))
        except (OSError, ValueError) as exc:
            raise CorruptVersion(f"{path}: unreadable manifest: {exc}") from exc
        if verify:
            actual = hash_tree(path)
            if actual != manifest.files:
                bad = sorted(set(actual.items()) ^ set(manifest.files.items()))
                raise CorruptVersion(f"{path}: files do not match the manifest: {[p for p, _ in bad][:5]}")
        index = dense.load(path / "vectors.faiss")
        sparse = SparseIndex.load(path / "sparse")
        docs = DocStore.open_readonly(path / "docs.sqlite", manifest.embedding.dimension)
        return cls(path, manifest, index, sparse, docs)

    def close(self) -> None:
        self.docs.close()

    # --- documents --------------------------------------------------------------------------------

    def _document_rows(self) -> list[DocumentRow]:
        # A version never changes: its documents are grouped once (one scan of the docstore) and
        # every page after that is a bisect. Memory: one small row per document.
        with self._doc_rows_lock:
            if self._doc_rows is None:
                self._doc_rows = self.docs.document_rows()
            return self._doc_rows

    def documents(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        origin: str | None = None,
        principal: str | None = None,
    ) -> DocumentPage:
        """A page of this version's documents (chunks grouped by document id), ordered by source;
        see :meth:`DocStore.documents`. ValueError for a cursor it did not hand out."""
        return self.docs.documents(
            limit=limit, cursor=cursor, origin=origin, principal=principal, rows=self._document_rows()
        )

    def document(self, doc_id: str) -> DocumentInfo | None:
        return self.docs.document(doc_id, rows=self._document_rows())

    # --- search -----------------------------------------------------------------------------------

    def search(
        self,
        *,
        vector: np.ndarray | None = None,
        query: str | None = None,
        k: int = 5,
        filter: dict[str, Any] | None = None,
        mode: Mode = "hybrid",
        score_threshold: float | None = None,
    ) -> list[Hit]:
        if mode == "dense" and vector is None:
            raise ModeUnavailable("dense search needs a query vector")
        if mode == "sparse" and not query:
            raise ModeUnavailable("sparse search needs query text")
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.manifest.embedding.dimension:
                want = self.manifest.embedding.dimension
                raise ModeUnavailable(f"vector has {vector.shape[0]} dimensions; the collection has {want}")
        where, params = compile_filter(filter)
        allowed = self.docs.matching(where, params) if filter else None
        if (allowed is not None and len(allowed) == 0) or self.count == 0:
            return []
        if mode == "hybrid" and (vector is None or not query):
            mode = "dense" if vector is not None else "sparse"
        if mode == "dense":
            assert vector is not None
            scores, ids = self._dense(vector, k, allowed)
            hits = self._hits(ids, scores, dense=scores)
        elif mode == "sparse":
            assert query is not None
            all_scores = self.sparse.scores(query, self._rows(allowed))
            rows = _top(all_scores, k)
            ids = self.sparse.ids[rows]
            hits = self._hits(ids, all_scores[rows], sparse=all_scores[rows])
        else:
            assert vector is not None and query is not None
            hits = self._hybrid(vector, query, k, allowed)
        if score_threshold is not None:
            hits = [h for h in hits if h.score >= score_threshold]
        return hits

    def _rows(self, allowed: np.ndarray | None) -> np.ndarray | None:
        if allowed is None:
            return None
        row_of = self.sparse.row_of()
        return np.array([row_of[int(i)] for i in allowed if int(i) in row_of], dtype=np.int64)

    def _dense(self, vector: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        kind = self.manifest.index_built
        if allowed is not None and kind != "flat" and len(allowed) <= EXACT_SCAN_MAX:
            ids, vecs = self.docs.vectors_for(allowed)
            scores = self._exact(vecs, vector)
            order = np.argsort(-scores, kind="stable")[:k]
            return scores[order], ids[order]
        return dense.search(self.index, kind, self.manifest.index, vector, k, allowed)

    def _exact(self, vecs: np.ndarray, vector: np.ndarray) -> np.ndarray:
        scores: np.ndarray = (
            vecs @ vector if self.manifest.index.metric == "ip" else -((vecs - vector) ** 2).sum(axis=1)
        )
        return scores

    def _hybrid(self, vector: np.ndarray, query: str, k: int, allowed: np.ndarray | None) -> list[Hit]:
        depth = max(3 * k, 30)
        _, d_ids = self._dense(vector, depth, allowed)
        s_all = self.sparse.scores(query, self._rows(allowed))
        s_rows = _top(s_all, depth)
        candidates = np.unique(np.concatenate([d_ids, self.sparse.ids[s_rows]]))
        # Score every candidate by both parts, exactly.
        c_ids, c_vecs = self.docs.vectors_for(candidates)
        dense_c = self._exact(c_vecs, vector)
        row_of = self.sparse.row_of()
        sparse_c = np.array(
            [s_all[row_of[int(i)]] if int(i) in row_of else 0.0 for i in c_ids], dtype=np.float32
        )
        w_dense = dense_weight(query, self.manifest.embedding.languages)
        # Min-max: cosine (or negative L2) spreads over the candidates like BM25 does after its max.
        d_lo, d_hi = float(dense_c.min(initial=0.0)), float(dense_c.max(initial=0.0))
        d_norm = (dense_c - d_lo) / max(d_hi - d_lo, 1e-9)
        s_norm = sparse_c / max(self.sparse.ceiling(query), float(sparse_c.max(initial=0.0)), 1e-9)
        fused = w_dense * d_norm + (1.0 - w_dense) * s_norm
        # Ties (e.g. documents BM25 does not find when dense counts 0) are broken by the dense score.
        order = np.lexsort((-dense_c, -fused))[:k]
        return self._hits(c_ids[order], fused[order], dense=dense_c[order], sparse=sparse_c[order])

    def _hits(
        self,
        ids: np.ndarray,
        scores: np.ndarray,
        dense: np.ndarray | None = None,
        sparse: np.ndarray | None = None,
    ) -> list[Hit]:
        found = self.docs.fetch(ids.tolist())
        hits = []
        for i, iid in enumerate(ids.tolist()):
            if iid not in found:
                continue
            sid, text, meta = found[iid]
            hits.append(
                Hit(
                    id=sid,
                    text=text,
                    metadata=meta,
                    score=float(scores[i]),
                    int_id=iid,
                    dense_score=float(dense[i]) if dense is not None else None,
                    sparse_score=float(sparse[i]) if sparse is not None else None,
                )
            )
        return hits


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best positive scores, best first."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        part = np.argpartition(-scores[positive], k - 1)[:k]
        positive = positive[part]
    return positive[np.argsort(-scores[positive], kind="stable")]
