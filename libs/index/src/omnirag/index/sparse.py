"""BM25 over words (:func:`omnirag.core.text.tokenize`: CJK runs segmented by jieba), stored with the
version.

bm25s saves its matrices as ``.npy`` and its vocabulary as JSON; it is loaded with
``allow_pickle=False``. The BM25 row of each document is recorded in ``sparse/ids.npy``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import bm25s
import numpy as np

# The tokenizer is shared with the gateway's answer checks; re-exported for the index's users.
from omnirag.core.text import TOKENIZER_NAME, cjk_share, tokenize

__all__ = ["TOKENIZER_NAME", "SparseIndex", "cjk_share", "tokenize"]


class SparseIndex:
    def __init__(self, bm25: bm25s.BM25 | None, ids: np.ndarray) -> None:
        self.bm25 = bm25
        self.ids = ids  # BM25 row → int id
        self._row_of: dict[int, int] | None = None
        self._term_max: np.ndarray | None = None

    @classmethod
    def build(cls, docs: Iterable[tuple[int, str]]) -> SparseIndex:
        ids: list[int] = []
        corpus: list[list[str]] = []
        for iid, text in docs:
            ids.append(iid)
            corpus.append(tokenize(text) or [""])
        if not corpus:
            return cls(None, np.zeros(0, dtype=np.int64))
        bm25 = bm25s.BM25()
        bm25.index(corpus, show_progress=False)
        return cls(bm25, np.array(ids, dtype=np.int64))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "ids.npy", self.ids, allow_pickle=False)
        if self.bm25 is not None:
            self.bm25.save(str(directory), show_progress=False, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> SparseIndex:
        ids = np.load(directory / "ids.npy", allow_pickle=False)
        if len(ids) == 0:
            return cls(None, ids)
        bm25 = bm25s.BM25.load(str(directory), show_progress=False, allow_pickle=False, mmap=False)
        return cls(bm25, ids)

    def row_of(self) -> dict[int, int]:
        if self._row_of is None:
            self._row_of = {int(i): r for r, i in enumerate(self.ids)}
        return self._row_of

    def ceiling(self, query: str) -> float:
        """The most any document could score for ``query``: the sum of each distinct query term's best
        score in the collection. Dividing by it (not by the best hit) keeps a hit that matched only
        common words from looking like a perfect match."""
        if self.bm25 is None:
            return 0.0
        if self._term_max is None:
            data, indptr = self.bm25.scores["data"], self.bm25.scores["indptr"]
            term_max = np.zeros(len(indptr) - 1, dtype=np.float32)
            present = np.flatnonzero(np.diff(indptr) > 0)
            if len(present):
                term_max[present] = np.maximum.reduceat(data, indptr[present])
            self._term_max = term_max
        vocab = self.bm25.vocab_dict
        return float(sum(self._term_max[vocab[t]] for t in dict.fromkeys(tokenize(query)) if t in vocab))

    def scores(self, query: str, allowed_rows: np.ndarray | None = None) -> np.ndarray:
        """BM25 score of every document (0 where the query shares no word, or not allowed)."""
        n = len(self.ids)
        if self.bm25 is None or n == 0:
            return np.zeros(n, dtype=np.float32)
        tokens = tokenize(query)
        if not tokens:
            return np.zeros(n, dtype=np.float32)
        mask = None
        if allowed_rows is not None:
            mask = np.zeros(n, dtype=np.float32)
            mask[allowed_rows] = 1.0
        return np.asarray(self.bm25.get_scores(tokens, weight_mask=mask), dtype=np.float32)
