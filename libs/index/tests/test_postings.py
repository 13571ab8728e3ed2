"""BM25 over segments (issue 17): scores over several segments with deletions equal one bm25s
index over the same live documents, the ceiling too; postings survive a save and a load."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from omnirag.index.postings import LiveSegment, Postings, Statistics, ceiling, scores
from omnirag.index.sparse import SparseIndex

WORDS = [
    "gateway",
    "retriever",
    "embedder",
    "index",
    "version",
    "segment",
    "port",
    "redis",
    "helm",
    "chart",
    "upload",
    "crawler",
    "faiss",
    "bm25",
    "hybrid",
    "filter",
    "delete",
    "compaction",
    "manifest",
    "tokenizer",
    "query",
    "answer",
    "source",
]
CHINESE = ["大熊猫吃竹子", "北京是中国的首都", "网关监听哪个端口", "检索器使用向量索引", "索引版本原子发布"]
QUERIES = [
    "gateway port",
    "faiss faiss hybrid",  # a repeated term counts twice, as bm25s counts it
    "compaction of segment manifest",
    "大熊猫",
    "网关 端口 gateway",
    "nothing matches zzzz",
    "the of and",  # stopwords only: no token
]


def corpus(n: int, seed: int = 7) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 17 == 0:
            text = ""  # no token: indexed as one empty token
        elif i % 5 == 0:
            text = rng.choice(CHINESE) + " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        else:
            text = " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))
        docs.append((1000 + i, text))
    return docs


def single(docs: list[tuple[int, str]], query: str) -> dict[int, float]:
    """Score of every document by one bm25s index (SparseIndex, what a version holds today)."""
    index = SparseIndex.build(docs)
    return dict(zip(index.ids.tolist(), index.scores(query).tolist(), strict=True))


def merged(segments: list[LiveSegment], query: str) -> dict[int, float]:
    stats = Statistics.of(segments)
    out: dict[int, float] = {}
    for segment, row_scores in zip(segments, scores(segments, query, stats), strict=True):
        for row, iid in enumerate(segment.postings.ids.tolist()):
            if segment.live is None or segment.live[row]:
                out[iid] = float(row_scores[row])
            else:
                assert row_scores[row] == 0.0, "a deleted row scored"
    return out


def split(docs: list[tuple[int, str]], sizes: list[int]) -> list[list[tuple[int, str]]]:
    parts, start = [], 0
    for size in sizes:
        parts.append(docs[start : start + size])
        start += size
    assert start == len(docs)
    return parts


@pytest.mark.parametrize("query", QUERIES)
def test_one_segment_scores_as_bm25s_does(query: str) -> None:
    docs = corpus(300)
    want = single(docs, query)
    got = merged([LiveSegment(Postings.build(docs))], query)
    assert got.keys() == want.keys()
    assert np.array_equal(np.array(list(got.values())), np.array([want[i] for i in got]))


@pytest.mark.parametrize("query", QUERIES)
def test_segments_with_deletions_score_as_one_index_of_the_live_documents(query: str) -> None:
    docs = corpus(600, seed=11)
    rng = random.Random(3)
    deleted = {iid for iid, _ in docs if rng.random() < 0.2}
    segments = []
    for part in split(docs, [350, 200, 40, 9, 1]):
        postings = Postings.build(part)
        live = np.array([iid not in deleted for iid, _ in part], dtype=bool)
        segments.append(LiveSegment(postings, None if live.all() else live))
    live_docs = [(iid, text) for iid, text in docs if iid not in deleted]
    want = single(live_docs, query)
    got = merged(segments, query)
    assert got.keys() == want.keys()
    ids = sorted(want)
    # Scores equal to float32 rounding; the ranking is the same.
    assert np.allclose([got[i] for i in ids], [want[i] for i in ids], rtol=1e-6, atol=0)
    assert sorted(ids, key=lambda i: (-got[i], i)) == sorted(ids, key=lambda i: (-want[i], i))
    index = SparseIndex.build(live_docs)
    assert ceiling(segments, query, Statistics.of(segments)) == pytest.approx(index.ceiling(query), rel=1e-6)


def test_a_filter_lets_only_its_rows_score() -> None:
    docs = corpus(100)
    segments = [LiveSegment(Postings.build(p)) for p in split(docs, [60, 40])]
    stats = Statistics.of(segments)
    allowed = [np.array([1, 2, 3]), None]
    first, second = scores(segments, "gateway port helm", stats, allowed)
    unfiltered = scores(segments, "gateway port helm", stats)
    assert np.flatnonzero(first).tolist() == [r for r in (1, 2, 3) if unfiltered[0][r] > 0]
    assert np.array_equal(second, unfiltered[1])


def test_nothing_live_scores_nothing() -> None:
    docs = corpus(10)
    segment = LiveSegment(Postings.build(docs), np.zeros(10, dtype=bool))
    stats = Statistics.of([segment])
    assert stats.documents == 0
    assert not scores([segment], "gateway", stats)[0].any()
    assert ceiling([segment], "gateway", stats) == 0.0


def test_postings_survive_a_save_and_a_load_without_pickle(tmp_path: Path) -> None:
    docs = corpus(120)
    built = Postings.build(docs)
    built.save(tmp_path / "p")
    loaded = Postings.load(tmp_path / "p")
    assert loaded.terms == built.terms
    for name in ("indptr", "rows", "tf", "lengths", "ids"):
        assert np.array_equal(getattr(loaded, name), getattr(built, name)), name
    seg = [LiveSegment(loaded)]
    assert merged(seg, "gateway 大熊猫") == merged([LiveSegment(built)], "gateway 大熊猫")


def test_a_damaged_postings_directory_is_refused(tmp_path: Path) -> None:
    Postings.build(corpus(20)).save(tmp_path / "p")
    (tmp_path / "p" / "terms.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="not a list of terms"):
        Postings.load(tmp_path / "p")
    Postings.build(corpus(20)).save(tmp_path / "q")
    np.save(tmp_path / "q" / "indptr.npy", np.zeros(3, dtype=np.int64), allow_pickle=False)
    with pytest.raises(ValueError, match="do not match their vocabulary"):
        Postings.load(tmp_path / "q")
    # An object array would need pickle: refused by numpy itself.
    Postings.build(corpus(20)).save(tmp_path / "r")
    np.save(tmp_path / "r" / "ids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        Postings.load(tmp_path / "r")
