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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from omnirag.index import dense
from omnirag.index.docstore import (
    DocStore,
    DocumentInfo,
    DocumentPage,
    DocumentRow,
    describe,
    merge_document_rows,
    page_documents,
)
from omnirag.index.filters import compile_filter
from omnirag.index.manifest import Manifest, hash_tree
from omnirag.index.merge import merge_top_tagged
from omnirag.index.postings import LiveSegment, Postings, Statistics, ceiling
from omnirag.index.postings import scores as postings_scores
from omnirag.index.segment import (
    SEGMENT_RE,
    SEGMENTS,
    CorruptSegment,
    Segment,
    SegmentInfo,
    read_deletions,
)
from omnirag.index.sparse import cjk_share

log = logging.getLogger("omnirag.index.collection")

Mode = Literal["dense", "sparse", "hybrid"]
# Below this many matching documents an approximate index is bypassed by an exact scan.
EXACT_SCAN_MAX = 20000
# Segments this small (the ones single uploads leave until compaction merges them) are searched
# together, by one exact scan of their vectors held in memory, instead of one FAISS call each.
TAIL_SEGMENT_MAX = 4096
# A segment with this many deletions or fewer is searched for k + deletions hits without a
# selector, and the deleted ones dropped: exact, and cheaper than testing every vector's id.
OVERFETCH_DELETIONS_MAX = 1024
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


@dataclass(eq=False)
class Part:
    """A segment as one version sees it: the int ids that version deleted from it left out."""

    segment: Segment
    deleted: np.ndarray  # sorted int ids

    def __post_init__(self) -> None:
        live = None
        if len(self.deleted):
            live = ~np.isin(self.segment.ids, self.deleted)
        self.live: np.ndarray | None = live
        self.view = LiveSegment(self.segment.postings, live)

    @property
    def live_count(self) -> int:
        return self.view.live_count

    def not_deleted(self) -> Any:
        """A FAISS selector of every id but the deleted ones, made once (searches only read it)."""
        selector = self.__dict__.get("_not_deleted")
        if selector is None:
            inner = faiss.IDSelectorBatch(np.ascontiguousarray(self.deleted, dtype=np.int64))
            selector = faiss.IDSelectorNot(inner)
            self.__dict__["_not_deleted_inner"] = inner  # the wrapped selector must outlive it
            self.__dict__["_not_deleted"] = selector
        return selector

    @property
    def exclude(self) -> np.ndarray | None:
        return self.deleted if len(self.deleted) else None

    def owns_live(self, int_ids: np.ndarray) -> np.ndarray:
        """Which of ``int_ids`` are live chunks of this part."""
        mask = self.segment.owns(int_ids)
        if len(self.deleted):
            mask &= ~in_sorted(int_ids, self.deleted)
        return mask

    def rows_of(self, int_ids: np.ndarray) -> np.ndarray:
        """Postings rows of ``int_ids`` (which this part owns)."""
        rows: np.ndarray = np.searchsorted(self.segment.ids, int_ids)
        return rows


class SegmentCache:
    """Open segments by id, shared by the versions of a collection a process has loaded: a reload
    opens only the segments it does not hold yet, and a segment no loaded version lists is closed
    when the last search holding it ends (it is only weakly held here)."""

    def __init__(self) -> None:
        self._open: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.opened = 0  # segments opened (not found here) since the cache was made

    def get(self, path: Path, info_sha256: str | None, verify: bool) -> Segment:
        key = str(path)
        with self._lock:
            found = self._open.get(key)
            if found is not None:
                return found
        segment = Segment.open(path, info_sha256=info_sha256, verify=verify)
        weakref.finalize(segment, segment.docs.conn.close)
        with self._lock:
            self.opened += 1
            return self._open.setdefault(key, segment)

    def __len__(self) -> int:
        return len(self._open)


def _legacy_segment(path: Path, manifest: Manifest) -> Segment:
    """A format 1 version read as one segment: its docstore and dense index, and postings built
    from its texts (its bm25s files score as the postings do, but cannot be merged with others)."""
    docs = DocStore.open_readonly(path / "docs.sqlite", manifest.embedding.dimension)
    try:
        postings = Postings.build(docs.iter_texts())
        index = dense.load(path / "vectors.faiss")
    except BaseException:
        docs.close()
        raise
    info = SegmentInfo(
        id="format1",
        created_at=manifest.created_at,
        documents=len(postings.ids),
        dimension=manifest.embedding.dimension,
        index_built=manifest.index_built,
        files={},
    )
    return Segment(info.id, path, info, docs, index, postings)


class Collection:
    """One version of a collection, loaded: its segments (each with the deletions this version
    made), searched together as one index (see :mod:`omnirag.index.merge`)."""

    def __init__(self, path: Path, manifest: Manifest, parts: list[Part], *, owned: bool = True) -> None:
        self.path = path
        self.manifest = manifest
        self.parts = parts
        self.stats = Statistics.of([p.view for p in parts])
        # The small segments' live vectors, in one matrix (see TAIL_SEGMENT_MAX).
        small = [i for i, p in enumerate(parts) if p.segment.count <= TAIL_SEGMENT_MAX]
        self._tail = small if len(parts) > 1 else []
        self._tail_ids = np.zeros(0, dtype=np.int64)
        self._tail_vecs = np.zeros((0, manifest.embedding.dimension), dtype=np.float32)
        owner = np.zeros(0, dtype=np.int32)
        if self._tail:
            got = []
            for i in self._tail:
                part = parts[i]
                live = part.segment.ids if part.live is None else part.segment.ids[part.live]
                ids, vecs = part.segment.docs.vectors_for(live)
                got.append((ids, vecs, np.full(len(ids), i, dtype=np.int32)))
            self._tail_ids = np.concatenate([ids for ids, _, _ in got])
            self._tail_vecs = np.ascontiguousarray(np.concatenate([v for _, v, _ in got]), dtype=np.float32)
            owner = np.concatenate([o for _, _, o in got])
        # Which small segment holds each of their live chunks (live ids are unique across parts),
        # sorted for one lookup; the large segments are asked directly. Nothing the size of the
        # whole collection is built per version: a reload adds only what it does not share.
        self._tail_part = owner  # the part of each of _tail_ids
        order = np.argsort(self._tail_ids, kind="stable")
        self._tail_sorted, self._tail_owner = self._tail_ids[order], owner[order]
        self._owned = owned  # close the segments with the collection (no SegmentCache holds them)
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

    @property
    def segments(self) -> list[Segment]:
        return [p.segment for p in self.parts]

    @classmethod
    def open(cls, path: Path, *, verify: bool = True, cache: SegmentCache | None = None) -> Collection:
        """Load a version directory; with ``verify`` every file's sha256 must match the manifest
        (and every segment's, its segment.json). Format 1 versions are read as one segment."""
        try:
            manifest = Manifest.model_validate(json.loads((path / "manifest.json").read_text()))
        except (OSError, ValueError) as exc:
            raise CorruptVersion(f"{path}: unreadable manifest: {exc}") from exc
        if verify:
            actual = hash_tree(path)
            if actual != manifest.files:
                bad = sorted(set(actual.items()) ^ set(manifest.files.items()))
                raise CorruptVersion(f"{path}: files do not match the manifest: {[p for p, _ in bad][:5]}")
        if manifest.format_version == 1:
            return cls(path, manifest, [Part(_legacy_segment(path, manifest), np.zeros(0, dtype=np.int64))])
        parts: list[Part] = []
        segments_dir = path.parent.parent / SEGMENTS
        try:
            for ref in manifest.segments:
                seg_path = segments_dir / ref.id
                if not SEGMENT_RE.fullmatch(ref.id):
                    raise CorruptVersion(f"{path}: {ref.id!r} is not a segment id")
                if cache is not None:
                    segment = cache.get(seg_path, ref.info_sha256, verify)
                else:
                    segment = Segment.open(seg_path, info_sha256=ref.info_sha256, verify=verify)
                deleted = read_deletions(path, ref.deletions)
                if segment.count != ref.documents or len(deleted) != ref.deleted:
                    raise CorruptVersion(f"{path}: segment {ref.id} is not the one the manifest describes")
                parts.append(Part(segment, deleted))
        except CorruptSegment as exc:
            if cache is None:
                for part in parts:
                    part.segment.close()
            raise CorruptVersion(str(exc)) from exc
        except BaseException:
            if cache is None:
                for part in parts:
                    part.segment.close()
            raise
        return cls(path, manifest, parts, owned=cache is None)

    def close(self) -> None:
        if self._owned:
            for part in self.parts:
                part.segment.close()

    # --- chunks -----------------------------------------------------------------------------------

    def chunks(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every live chunk: id → (text, metadata). Reads everything: for checks and small tools."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for part in self.parts:
            out.update(part.segment.docs.texts(exclude=part.exclude))
        return out

    def document_chunks(
        self, ids_or_sources: Sequence[str], *, origin: str | None = None
    ) -> dict[str, list[str]]:
        """Document id → its live chunk ids, for the documents named by id or source."""
        out: dict[str, list[str]] = {}
        for part in self.parts:
            found = part.segment.docs.document_chunks(ids_or_sources, origin=origin, exclude=part.exclude)
            for doc_id, chunk_ids in found.items():
                out.setdefault(doc_id, []).extend(chunk_ids)
        return {d: sorted(c) for d, c in out.items()}

    def vectors_for(self, int_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(int ids, vectors) of the live chunks among ``int_ids``, ascending by id."""
        return self._vectors_for(np.unique(np.asarray(int_ids, dtype=np.int64)))

    def dense_ids(self) -> set[int]:
        """The int ids the dense indexes search (deletions applied): equal to the chunks' ids."""
        out: set[int] = set()
        for part in self.parts:
            ids = faiss.vector_to_array(part.segment.index.id_map)
            out.update(ids[part.owns_live(ids)].tolist())
        return out

    def sparse_ids(self) -> set[int]:
        """The int ids BM25 scores (deletions applied)."""
        out: set[int] = set()
        for part in self.parts:
            ids = part.segment.ids
            out.update((ids if part.live is None else ids[part.live]).tolist())
        return out

    # --- documents --------------------------------------------------------------------------------

    def _document_rows(self) -> list[DocumentRow]:
        # A version never changes: its documents are grouped once (one scan of each segment) and
        # every page after that is a bisect. Memory: one small row per document.
        with self._doc_rows_lock:
            if self._doc_rows is None:
                per_part = [p.segment.docs.document_rows(exclude=p.exclude) for p in self.parts]
                self._doc_rows = per_part[0] if len(per_part) == 1 else merge_document_rows(per_part)
            return self._doc_rows

    def _metadata_of(self, chunk_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        metas: dict[str, dict[str, Any]] = {}
        for part in self.parts:
            metas.update(part.segment.docs.metadata_of(chunk_ids, exclude=part.exclude))
        return metas

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
        return page_documents(
            self._document_rows(),
            self._metadata_of,
            limit=limit,
            cursor=cursor,
            origin=origin,
            principal=principal,
        )

    def document(self, doc_id: str) -> DocumentInfo | None:
        found = [r for r in self._document_rows() if r.id == doc_id]
        return describe(found[:1], self._metadata_of)[0] if found else None

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
        allowed: list[np.ndarray] | None = None
        if filter:
            allowed = [p.segment.docs.matching(where, params, exclude=p.exclude) for p in self.parts]
        if (allowed is not None and not any(len(a) for a in allowed)) or self.count == 0:
            return []
        if mode == "hybrid" and (vector is None or not query):
            mode = "dense" if vector is not None else "sparse"
        if mode == "dense":
            assert vector is not None
            scores, ids, owners = self._dense(vector, k, allowed)
            hits = self._hits(ids, scores, owners, dense=scores)
        elif mode == "sparse":
            assert query is not None
            scores, ids, owners = self._sparse_top(self._sparse(query, allowed), k)
            hits = self._hits(ids, scores, owners, sparse=scores)
        else:
            assert vector is not None and query is not None
            hits = self._hybrid(vector, query, k, allowed)
        if score_threshold is not None:
            hits = [h for h in hits if h.score >= score_threshold]
        return hits

    def sparse_ceiling(self, query: str) -> float:
        """The most any live chunk could score by BM25 for ``query`` (see postings.ceiling)."""
        return ceiling([p.view for p in self.parts], query, self.stats)

    def _sparse(self, query: str, allowed: list[np.ndarray] | None) -> list[np.ndarray]:
        rows = None if allowed is None else [p.rows_of(a) for p, a in zip(self.parts, allowed, strict=True)]
        return postings_scores([p.view for p in self.parts], query, self.stats, rows)

    def _sparse_top(self, per_part: list[np.ndarray], k: int) -> Owned:
        found = []
        for i, (part, scores) in enumerate(zip(self.parts, per_part, strict=True)):
            rows = _top(scores, k)
            found.append((scores[rows], part.segment.ids[rows], np.full(len(rows), i, dtype=np.int32)))
        return _merge_owned(found, k)

    def _dense(self, vector: np.ndarray, k: int, allowed: list[np.ndarray] | None) -> Owned:
        """The top ``k`` (scores, int ids) and the part that holds each."""
        tail = set(self._tail)
        found = []
        for i, p in enumerate(self.parts):
            if i not in tail:
                scores, ids = self._dense_part(p, vector, k, None if allowed is None else allowed[i])
                found.append((scores, ids, np.full(len(ids), i, dtype=np.int32)))
        if tail:
            ids, owner = self._tail_ids, self._tail_part
            scores = self._exact(self._tail_vecs, vector)
            if allowed is not None:
                keep = np.isin(ids, np.concatenate([allowed[i] for i in self._tail]))
                ids, scores, owner = ids[keep], scores[keep], owner[keep]
            order = _best(scores, ids, k)
            found.append((scores[order], ids[order], owner[order]))
        return _merge_owned(found, k)

    def _dense_part(
        self, part: Part, vector: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        kind = part.segment.index_built
        if allowed is not None and len(allowed) == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if allowed is not None and kind != "flat" and len(allowed) <= EXACT_SCAN_MAX:
            ids, vecs = part.segment.docs.vectors_for(allowed)
            scores = self._exact(vecs, vector)
            order = np.argsort(-scores, kind="stable")[:k]
            return scores[order], ids[order]
        cfg = self.manifest.index
        deleted = part.deleted
        if allowed is None and 0 < len(deleted) <= OVERFETCH_DELETIONS_MAX:
            scores, ids = dense.search(part.segment.index, kind, cfg, vector, k + len(deleted))
            keep = ~in_sorted(ids, deleted)
            return scores[keep][:k], ids[keep][:k]
        selector = part.not_deleted() if allowed is None and len(deleted) else None
        return dense.search(part.segment.index, kind, cfg, vector, k, allowed, selector=selector)

    def _exact(self, vecs: np.ndarray, vector: np.ndarray) -> np.ndarray:
        scores: np.ndarray = (
            vecs @ vector if self.manifest.index.metric == "ip" else -((vecs - vector) ** 2).sum(axis=1)
        )
        return scores

    def _owners(self, int_ids: np.ndarray) -> np.ndarray:
        """The part holding each of ``int_ids`` live (-1: none)."""
        owners: np.ndarray = np.full(len(int_ids), -1, dtype=np.int32)
        tail = set(self._tail)
        for i, part in enumerate(self.parts):
            if i not in tail:
                owners[part.owns_live(int_ids)] = i
        if len(self._tail_sorted):
            at = np.minimum(np.searchsorted(self._tail_sorted, int_ids), len(self._tail_sorted) - 1)
            found = self._tail_sorted[at] == int_ids
            owners[found] = self._tail_owner[at][found]
        return owners

    def _vectors_for(self, int_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live chunks among ``int_ids``, in ``int_ids``' order."""
        if len(self.parts) == 1:
            return self.parts[0].segment.docs.vectors_for(int_ids)
        got_ids, got_vecs = [], []
        owners = self._owners(int_ids)
        for i in np.unique(owners[owners >= 0]).tolist():
            ids, vecs = self.parts[i].segment.docs.vectors_for(int_ids[owners == i])
            got_ids.append(ids)
            got_vecs.append(vecs)
        if not got_ids:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.manifest.embedding.dimension), np.float32)
        ids = np.concatenate(got_ids)
        vecs = np.concatenate(got_vecs)
        order = np.argsort(ids, kind="stable")
        return ids[order], vecs[order]

    def _hybrid(self, vector: np.ndarray, query: str, k: int, allowed: list[np.ndarray] | None) -> list[Hit]:
        depth = max(3 * k, 30)
        _, d_ids, _ = self._dense(vector, depth, allowed)
        per_part = self._sparse(query, allowed)
        _, s_ids, _ = self._sparse_top(per_part, depth)
        candidates = np.unique(np.concatenate([d_ids, s_ids]))
        # Score every candidate by both parts, exactly.
        c_ids, c_vecs = self._vectors_for(candidates)
        dense_c = self._exact(c_vecs, vector)
        sparse_c = np.zeros(len(c_ids), dtype=np.float32)
        owners = self._owners(c_ids)
        for i in np.unique(owners[owners >= 0]).tolist():
            mine = owners == i
            sparse_c[mine] = per_part[i][self.parts[i].rows_of(c_ids[mine])]
        w_dense = dense_weight(query, self.manifest.embedding.languages)
        # Min-max: cosine (or negative L2) spreads over the candidates like BM25 does after its max.
        d_lo, d_hi = float(dense_c.min(initial=0.0)), float(dense_c.max(initial=0.0))
        d_norm = (dense_c - d_lo) / max(d_hi - d_lo, 1e-9)
        s_norm = sparse_c / max(self.sparse_ceiling(query), float(sparse_c.max(initial=0.0)), 1e-9)
        fused = w_dense * d_norm + (1.0 - w_dense) * s_norm
        # Ties (e.g. documents BM25 does not find when dense counts 0) are broken by the dense score.
        order = np.lexsort((-dense_c, -fused))[:k]
        return self._hits(
            c_ids[order], fused[order], owners[order], dense=dense_c[order], sparse=sparse_c[order]
        )

    def _hits(
        self,
        ids: np.ndarray,
        scores: np.ndarray,
        owners: np.ndarray | None = None,
        dense: np.ndarray | None = None,
        sparse: np.ndarray | None = None,
    ) -> list[Hit]:
        """Hits of ``ids`` (``owners``: the part holding each, when the search knows it)."""
        found: dict[int, tuple[str, str, dict[str, Any]]] = {}
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.parts) == 1:
            found.update(self.parts[0].segment.docs.fetch(ids.tolist()))
        else:
            owners = self._owners(ids) if owners is None else owners
            for i in sorted(set(owners[owners >= 0].tolist())):
                found.update(self.parts[i].segment.docs.fetch(ids[owners == i].tolist()))
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


#: (scores, int ids, the part holding each) of a search's best, best first.
Owned = tuple[np.ndarray, np.ndarray, np.ndarray]


def in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in ``sorted_ids`` (sorted, not empty): a binary search each, far
    cheaper than np.isin for the few dozen ids a search holds."""
    at = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    found: np.ndarray = sorted_ids[at] == values
    return found


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best ``scores``, best first, equal scores by int id (as merge_top
    orders them); a partial sort first when there are many, every tie at the k-th place kept."""
    if len(scores) > 4 * k > 0:
        kth = -np.partition(-scores, k - 1)[k - 1]
        candidates = np.flatnonzero(scores >= kth)
        return candidates[np.lexsort((ids[candidates], -scores[candidates]))][:k]
    return np.lexsort((ids, -scores))[:k]


def _merge_owned(found: list[Owned], k: int) -> Owned:
    """The merge over per-part results (merge_top_tagged), the part of each id carried along."""
    return found[0] if len(found) == 1 else merge_top_tagged(found, k)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best positive scores, best first; equal scores in row order (the int ids'
    order), also where the k-th place is shared, so that segments merge to what one index gives."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        values = scores[positive]
        kth = -np.partition(-values, k - 1)[k - 1]
        above = positive[values > kth]
        tied = positive[values == kth][: k - len(above)]
        positive = np.concatenate([above, tied])
    return positive[np.argsort(-scores[positive], kind="stable")]
