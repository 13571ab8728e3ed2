"""BM25: tokenization (jieba for CJK, English stopwords dropped), the saved index, sparse search."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from omnirag.index import Collection, Document
from omnirag.index.sparse import SparseIndex, cjk_share, tokenize

DIM = 8


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("The Quick brown fox, and the lazy dog!", ["quick", "brown", "fox", "lazy", "dog"]),
        ("foo_bar baz-qux 42 v2.0", ["foo", "bar", "baz", "qux", "42", "v2", "0"]),
        ("Crème brûlée ÜBER", ["crème", "brûlée", "über"]),
        ("我爱北京天安门", ["我", "爱", "北京", "天安门"]),
        ("大熊猫吃什么？", ["大熊猫", "吃", "什么"]),
        ("Python 是一种编程语言", ["python", "是", "一种", "编程语言"]),
        ("the of and is a", []),
        ("  ...!?  ", []),
        ("", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("", 0.0),
        ("hello world", 0.0),
        ("大熊猫", 1.0),
        ("ab大熊", 0.5),
        ("熊猫 panda", 2 / 7),
        ("!!!", 0.0),
        ("パンダ", 1.0),
        ("판다", 1.0),
    ],
)
def test_cjk_share(text: str, share: float) -> None:
    assert cjk_share(text) == pytest.approx(share)


def test_sparse_index_round_trip_without_pickle(tmp_path: Path) -> None:
    texts = ["red apples and green pears", "green tea from 中国", "apples apples apples", "", "the"]
    docs = [(1000 + i, t) for i, t in enumerate(texts)]
    built = SparseIndex.build(docs)
    built.save(tmp_path / "sparse")
    loaded = SparseIndex.load(tmp_path / "sparse")
    np.testing.assert_array_equal(loaded.ids, [1000, 1001, 1002, 1003, 1004])
    for query in ("apples", "green", "中国 tea", "nothing"):
        np.testing.assert_allclose(loaded.scores(query), built.scores(query), rtol=1e-6)
    scores = loaded.scores("apples")
    assert scores[2] > scores[0] > 0
    assert scores[1] == scores[3] == scores[4] == 0
    assert loaded.scores("中国")[1] > 0
    assert loaded.row_of() == {1000: 0, 1001: 1, 1002: 2, 1003: 3, 1004: 4}
    names = sorted(p.name for p in (tmp_path / "sparse").iterdir())
    assert "ids.npy" in names
    assert not [n for n in names if n.endswith((".pkl", ".pickle"))]
    for p in (tmp_path / "sparse").glob("*.npy"):
        np.load(p, allow_pickle=False)  # raises if any array needs pickle


def test_sparse_weight_mask_restricts_rows(tmp_path: Path) -> None:
    idx = SparseIndex.build([(1, "apple pie"), (2, "apple tart"), (3, "apple juice")])
    scores = idx.scores("apple", allowed_rows=np.array([0, 2]))
    assert scores[0] > 0 and scores[2] > 0
    assert scores[1] == 0


def test_an_empty_index(tmp_path: Path) -> None:
    idx = SparseIndex.build([])
    idx.save(tmp_path / "sparse")
    loaded = SparseIndex.load(tmp_path / "sparse")
    assert len(loaded.ids) == 0
    assert loaded.scores("anything").shape == (0,)


ZH_DOCS = {
    "wall": "长城是中国古代的军事防御工程，横跨中国北方数千公里。",
    "panda": "大熊猫生活在四川的山区，主要以竹子为食。",
    "shanghai": "上海位于长江入海口，是中国最大的城市之一。",
    "palace": "故宫位于北京中心，是明清两代的皇家宫殿。",
    "password": "重置密码：打开设置，选择安全，然后点击忘记密码。",
    "tea": "绿茶是中国最常见的茶，用刚采摘的茶叶制成。",
    "en-panda": "Giant pandas eat bamboo in the mountains of Sichuan.",
    "en-tea": "The tea is served hot, with the milk on the side.",
    "mixed": "在 Python 中，列表是可变的 sequence。",
}


@pytest.fixture(scope="module")
def coll(
    tmp_path_factory: pytest.TempPathFactory, unit_vectors: Callable, build_collection: Callable
) -> Collection:
    vecs = unit_vectors(len(ZH_DOCS), DIM, seed=1)
    docs = [Document(k, t, {"k": k}, vecs[i]) for i, (k, t) in enumerate(ZH_DOCS.items())]
    return build_collection(tmp_path_factory.mktemp("sparse"), "zh", docs, DIM)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("大熊猫吃什么？", "panda"),
        ("故宫在哪里", "palace"),
        ("如何重置密码", "password"),
        ("中国最大的城市是哪个", "shanghai"),
        ("长城有多长", "wall"),
        ("最常见的茶", "tea"),
        ("Python 列表", "mixed"),
        ("what do pandas eat", "en-panda"),
    ],
)
def test_a_chinese_query_finds_the_chinese_answer(coll: Collection, query: str, expected: str) -> None:
    hits = coll.search(query=query, k=3, mode="sparse")
    assert hits[0].id == expected
    assert hits[0].text == ZH_DOCS[expected]
    assert hits[0].metadata == {"k": expected}
    assert all(h.score > 0 for h in hits)


def test_english_stopwords_do_not_count(coll: Collection) -> None:
    # "the" is in en-tea three times; were it counted, en-tea would win on it.
    with_stopwords = coll.search(query="the pandas of the the", k=5, mode="sparse")
    without = coll.search(query="pandas", k=5, mode="sparse")
    assert [h.id for h in with_stopwords] == [h.id for h in without] == ["en-panda"]
    assert with_stopwords[0].score == pytest.approx(without[0].score)


@pytest.mark.parametrize("query", ["the", "of the and", "?!...", "   ", "unknownword", "火星"])
def test_a_query_with_no_known_token_finds_nothing(coll: Collection, query: str) -> None:
    assert coll.search(query=query, k=3, mode="sparse") == []


def test_sparse_search_with_a_filter(coll: Collection) -> None:
    hits = coll.search(query="中国", k=10, mode="sparse")
    assert {h.id for h in hits} == {"wall", "shanghai", "tea"}
    assert hits[0].id == "wall"  # says 中国 twice
    filtered = coll.search(query="中国", k=10, mode="sparse", filter={"k": {"$ne": "wall"}})
    assert {h.id for h in filtered} == {"shanghai", "tea"}
    assert coll.search(query="中国", k=10, mode="sparse", filter={"k": "panda"}) == []


def test_ceiling_is_the_sum_of_each_query_terms_best_score() -> None:
    from omnirag.index.sparse import SparseIndex

    index = SparseIndex.build([(1, "apple banana"), (2, "apple apple cherry"), (3, "banana split")])
    full = index.scores("apple banana")
    one = {t: index.scores(t).max() for t in ("apple", "banana")}
    assert index.ceiling("apple banana") == pytest.approx(one["apple"] + one["banana"], rel=1e-6)
    assert full.max() <= index.ceiling("apple banana") + 1e-6
    assert index.ceiling("apple apple banana") == index.ceiling("apple banana")  # distinct terms
    assert index.ceiling("durian") == 0.0
