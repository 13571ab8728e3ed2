"""BM25 over several segments with the statistics of the whole collection (issue 17).

A segment keeps raw postings — for every term, the documents that contain it and how often — and
every document's length, never precomputed scores: BM25's IDF and average document length depend
on every live document of the collection, and those change whenever another segment is written or
a document is deleted. At query time only the query's terms are scored, with collection-wide
statistics, so a search over many segments (with deletions) gives the very scores one BM25 index
over the same live documents gives — bm25s' default, Lucene's variant, which the single index uses:

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))      N, df over live documents
    score(d, t) = idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avglen))      k1 = 1.5, b = 0.75

computed in float64 and kept in float32 per posting, then summed in float32 per query token in
the query's order (a repeated token counts again), as bm25s does. A document whose text has no
token counts as one empty token, as :class:`omnirag.index.sparse.SparseIndex` indexes it.

Files (numpy ``.npy`` loaded with ``allow_pickle=False``, the vocabulary as JSON): ``terms.json``
(term of each id), ``indptr.npy`` (postings of term t at ``[indptr[t], indptr[t+1])``),
``rows.npy`` (segment rows), ``tf.npy``, ``lengths.npy`` (tokens per row), ``ids.npy`` (row → int id).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnirag.core.text import tokenize

K1 = 1.5
B = 0.75


@dataclass(frozen=True)
class Postings:
    """The postings of one segment's documents (rows in the order they were given)."""

    terms: list[str]
    indptr: np.ndarray  # int64, len(terms) + 1
    rows: np.ndarray  # int32, the rows of each term's documents, ascending
    tf: np.ndarray  # float32, beside rows
    lengths: np.ndarray  # float64, tokens per row
    ids: np.ndarray  # int64, row -> int id

    @property
    def count(self) -> int:
        return len(self.ids)

    def term_id(self, term: str) -> int | None:
        return self._vocab().get(term)

    def _vocab(self) -> dict[str, int]:
        vocab = self.__dict__.get("_vocab_cache")
        if vocab is None:
            vocab = {t: i for i, t in enumerate(self.terms)}
            object.__setattr__(self, "_vocab_cache", vocab)
        return vocab

    @classmethod
    def build(cls, docs: Iterable[tuple[int, str]]) -> Postings:
        vocab: dict[str, int] = {}
        ids: list[int] = []
        lengths: list[int] = []
        term_of: list[int] = []
        row_of: list[int] = []
        tf_of: list[int] = []
        for row, (iid, text) in enumerate(docs):
            tokens = tokenize(text) or [""]
            ids.append(iid)
            lengths.append(len(tokens))
            for term, n in Counter(tokens).items():
                term_of.append(vocab.setdefault(term, len(vocab)))
                row_of.append(row)
                tf_of.append(n)
        terms = list(vocab)
        by_term = np.asarray(term_of, dtype=np.int64)
        order = np.argsort(by_term, kind="stable")  # rows stay ascending within a term
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(by_term, minlength=len(terms)), out=indptr[1:])
        return cls(
            terms=terms,
            indptr=indptr,
            rows=np.asarray(row_of, dtype=np.int32)[order],
            tf=np.asarray(tf_of, dtype=np.float32)[order],
            lengths=np.asarray(lengths, dtype=np.float64),
            ids=np.asarray(ids, dtype=np.int64),
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "terms.json").write_text(json.dumps(self.terms, ensure_ascii=False), encoding="utf-8")
        for name in ("indptr", "rows", "tf", "lengths", "ids"):
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> Postings:
        terms = json.loads((directory / "terms.json").read_text(encoding="utf-8"))
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise ValueError(f"{directory / 'terms.json'}: not a list of terms")
        names = ("indptr", "rows", "tf", "lengths", "ids")
        arrays = {n: np.load(directory / f"{n}.npy", allow_pickle=False) for n in names}
        postings = cls(terms=terms, **arrays)
        if len(postings.indptr) != len(terms) + 1 or len(postings.rows) != len(postings.tf):
            raise ValueError(f"{directory}: postings do not match their vocabulary")
        if len(postings.lengths) != len(postings.ids):
            raise ValueError(f"{directory}: one length per document expected")
        return postings


@dataclass(frozen=True)
class LiveSegment:
    """A segment's postings and which of its rows are live (None: all of them)."""

    postings: Postings
    live: np.ndarray | None = None  # bool per row

    @property
    def live_count(self) -> int:
        return self.postings.count if self.live is None else int(self.live.sum())

    def live_length(self) -> float:
        lengths = self.postings.lengths
        return float(lengths.sum() if self.live is None else lengths[self.live].sum())


@dataclass(frozen=True)
class Statistics:
    """Collection-wide: live documents and their average length in tokens."""

    documents: int
    average_length: float

    @classmethod
    def of(cls, segments: Sequence[LiveSegment]) -> Statistics:
        documents = sum(s.live_count for s in segments)
        total = sum(s.live_length() for s in segments)
        return cls(documents, total / documents if documents else 0.0)


def _term_postings(segment: LiveSegment, term: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, tf) of the live documents of ``segment`` that contain ``term``."""
    tid = segment.postings.term_id(term)
    if tid is None:
        return None
    p = segment.postings
    start, end = int(p.indptr[tid]), int(p.indptr[tid + 1])
    rows, tf = p.rows[start:end], p.tf[start:end]
    if segment.live is not None:
        keep = segment.live[rows]
        rows, tf = rows[keep], tf[keep]
    return rows, tf


def _contributions(
    segments: Sequence[LiveSegment], term: str, stats: Statistics
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per segment, (rows, score of ``term`` in each) over the live documents containing it."""
    found = [_term_postings(s, term) for s in segments]
    df = sum(len(f[0]) for f in found if f is not None)
    if df == 0:
        return [None] * len(segments)
    # bm25s keeps the IDF in float32 and scores a posting in float64 before storing it in float32.
    idf = np.float32(math.log(1 + (stats.documents - df + 0.5) / (df + 0.5)))
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for segment, f in zip(segments, found, strict=True):
        if f is None or len(f[0]) == 0:
            out.append(None)
            continue
        rows, tf = f
        norm = K1 * ((1 - B) + B * segment.postings.lengths[rows] / np.float64(stats.average_length))
        score = (idf * (tf / (norm + tf))).astype(np.float32)
        out.append((rows, score))
    return out


def scores(
    segments: Sequence[LiveSegment],
    query: str,
    stats: Statistics,
    allowed: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """BM25 score of every row of every segment (0 where the query shares no word, where the row
    is deleted, or where ``allowed`` — per segment, the rows a filter lets through — excludes it)."""
    out = [np.zeros(s.postings.count, dtype=np.float32) for s in segments]
    if stats.documents == 0:
        return out
    for term in tokenize(query):
        for acc, part in zip(out, _contributions(segments, term, stats), strict=True):
            if part is not None:
                np.add.at(acc, part[0], part[1])
    if allowed is not None:
        for acc, rows in zip(out, allowed, strict=True):
            if rows is not None:
                mask = np.zeros(len(acc), dtype=bool)
                mask[rows] = True
                acc[~mask] = 0.0
    return out


def ceiling(segments: Sequence[LiveSegment], query: str, stats: Statistics) -> float:
    """The most any live document could score for ``query``: the sum over its distinct terms of the
    term's best score in the collection (see :meth:`omnirag.index.sparse.SparseIndex.ceiling`)."""
    total = 0.0
    for term in dict.fromkeys(tokenize(query)):
        best = [float(part[1].max()) for part in _contributions(segments, term, stats) if part is not None]
        if best:
            total += max(best)
    return total
