"""Metadata filters: compiled to SQL, applied inside every search mode, selective ones still give k hits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from omnirag.core.errors import InvalidInput
from omnirag.index import Collection, Document, FilterError, IndexConfig
from omnirag.index.filters import compile_filter

DIM = 16
N = 120
MISSING = object()


def meta(i: int) -> dict[str, Any]:
    m: dict[str, Any] = {
        "kb": ("docs", "faq", "blog")[i % 3],
        "n": i,
        "score": i / 10,
        "flag": i % 2 == 0,
        "source": f"file{i % 10}.md",
        "tag": "中文" if i % 4 == 0 else "其他",
    }
    if i % 5:
        m["lang"] = "zh" if i % 5 == 1 else "en"  # every fifth document has no "lang"
    if i % 6 == 0:
        m["a.b"] = "dotted"
    return m


@pytest.fixture(scope="module")
def coll(
    tmp_path_factory: pytest.TempPathFactory, unit_vectors: Callable, build_collection: Callable
) -> Collection:
    vecs = unit_vectors(N, DIM, seed=11)
    docs = [Document(f"d{i}", f"common words and item{i}", meta(i), vecs[i], f"h{i}") for i in range(N)]
    return build_collection(tmp_path_factory.mktemp("filters"), "filters", docs, DIM)


def matches(spec: dict[str, Any], m: dict[str, Any]) -> bool:
    """The documented semantics, written out plainly."""
    for field, cond in spec.items():
        value = m.get(field, MISSING)
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        ((op, arg),) = cond.items()
        if op == "$eq" and not (value is not MISSING and value == arg):
            return False
        if op == "$ne" and value is not MISSING and value == arg:
            return False
        if op == "$in" and not (value is not MISSING and value in arg):
            return False
        if op == "$nin" and value is not MISSING and value in arg:
            return False
    return True


FILTERS = [
    {"kb": "faq"},
    {"kb": {"$eq": "faq"}},
    {"n": 7},
    {"n": {"$in": [1, 2, 3, 500]}},
    {"score": 0.5},
    {"flag": True},
    {"flag": False},
    {"kb": {"$in": ["docs", "blog"]}},
    {"kb": {"$ne": "docs"}},
    {"lang": {"$ne": "zh"}},  # documents without "lang" match
    {"lang": {"$nin": ["zh", "en"]}},  # only documents without "lang"
    {"lang": "en"},
    {"lang": {"$in": ["en"]}},
    {"source": "file3.md", "kb": "docs"},  # AND
    {"kb": {"$in": ["faq", "blog"]}, "lang": {"$ne": "en"}, "flag": True},
    {"a.b": "dotted"},  # a key with a dot in it, not a path
    {"tag": "中文"},
    {"kb": "nothing-like-this"},
]


@pytest.mark.parametrize("spec", FILTERS, ids=[str(f) for f in FILTERS])
@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_filter_returns_exactly_the_matching_documents(
    coll: Collection, unit_vectors: Callable, spec: dict[str, Any], mode: str
) -> None:
    expected = {f"d{i}" for i in range(N) if matches(spec, meta(i))}
    hits = coll.search(
        vector=unit_vectors(1, DIM, seed=99)[0], query="common words", k=N, filter=spec, mode=mode
    )
    assert {h.id for h in hits} == expected
    assert len(hits) == len(expected)
    for h in hits:
        assert matches(spec, h.metadata)


def test_the_expected_sets_are_not_trivial() -> None:
    sizes = [sum(matches(f, meta(i)) for i in range(N)) for f in FILTERS]
    assert sizes[-1] == 0
    assert all(0 < s < N for s in sizes[:-1])
    assert sum(matches({"lang": {"$ne": "zh"}}, meta(i)) for i in range(N)) == 96


def test_filtered_dense_search_returns_the_best_matching_documents(
    coll: Collection, unit_vectors: Callable
) -> None:
    qv = unit_vectors(1, DIM, seed=5)[0]
    vecs = unit_vectors(N, DIM, seed=11)
    allowed = [i for i in range(N) if meta(i)["kb"] == "blog"]
    best = sorted(allowed, key=lambda i: -float(vecs[i] @ qv))[:5]
    hits = coll.search(vector=qv, k=5, filter={"kb": "blog"}, mode="dense")
    assert [h.id for h in hits] == [f"d{i}" for i in best]
    for h, i in zip(hits, best, strict=True):
        assert h.score == pytest.approx(float(vecs[i] @ qv), abs=1e-5)


def test_a_filter_with_fewer_matches_than_k(coll: Collection, unit_vectors: Callable) -> None:
    qv = unit_vectors(1, DIM, seed=5)[0]
    for mode in ("dense", "sparse", "hybrid"):
        hits = coll.search(vector=qv, query="common", k=10, filter={"n": {"$in": [3, 4, 5]}}, mode=mode)
        assert sorted(h.id for h in hits) == ["d3", "d4", "d5"]


def test_an_empty_filter_is_no_filter(coll: Collection, unit_vectors: Callable) -> None:
    qv = unit_vectors(1, DIM, seed=5)[0]
    assert len(coll.search(vector=qv, k=N, filter={}, mode="dense")) == N
    assert len(coll.search(vector=qv, k=N, filter=None, mode="dense")) == N
    assert compile_filter(None) == ("1", [])


@pytest.mark.parametrize(
    "spec",
    [
        {"kb": {"$gt": 1}},
        {"kb": {"$in": ["a"], "$ne": "b"}},
        {"kb": {}},
        {"kb": {"$in": []}},
        {"kb": {"$in": "docs"}},
        {"kb": {"$nin": None}},
        {"kb": {"$in": list(range(1025))}},
        {"kb": ["docs", "faq"]},
        {"kb": {"$eq": {"nested": 1}}},
        {"kb": None},
        {"kb": "x" * 4097},
        {'a"b': 1},
        {"$where": 1},
        {"a b": 1},
        {"": 1},
        {"x" * 65: 1},
        {"kb') OR 1=1 --": 1},
        {f"f{i}": 1 for i in range(17)},
        ["kb", "docs"],
        "kb = 'docs'",
    ],
    ids=lambda s: str(s)[:40],
)
def test_bad_filters_are_refused(coll: Collection, unit_vectors: Callable, spec: Any) -> None:
    with pytest.raises(FilterError):
        compile_filter(spec)
    with pytest.raises(FilterError):
        coll.search(vector=unit_vectors(1, DIM, seed=5)[0], k=3, filter=spec, mode="dense")


def test_filter_error_is_invalid_input_with_a_stable_code() -> None:
    with pytest.raises(InvalidInput) as err:
        compile_filter({"kb": {"$regex": ".*"}})
    assert err.value.code == "invalid_filter"
    assert "$regex" in err.value.message


def test_values_are_parameters_not_sql(coll: Collection, unit_vectors: Callable) -> None:
    where, params = compile_filter({"kb": "x' OR '1'='1"})
    assert "OR '1'" not in where
    assert "x' OR '1'='1" in params
    hits = coll.search(
        vector=unit_vectors(1, DIM, seed=5)[0], k=N, filter={"kb": "x' OR '1'='1"}, mode="dense"
    )
    assert hits == []


# --- selective filters over every index type --------------------------------------------------------

SEL_DIM = 64
SEL_N = 2000


@pytest.fixture(scope="module")
def selective(
    tmp_path_factory: pytest.TempPathFactory, unit_vectors: Callable, build_collection: Callable
) -> dict[str, Collection]:
    vecs = unit_vectors(SEL_N, SEL_DIM, seed=21)
    docs = [
        Document(f"s{i}", f"shared text {i}", {"group": i % 100, "even": i % 2 == 0}, vecs[i], f"h{i}")
        for i in range(SEL_N)
    ]
    root = tmp_path_factory.mktemp("selective")
    configs = {
        "flat": IndexConfig(type="flat"),
        "hnsw": IndexConfig(type="hnsw", hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=16),
        "ivfpq": IndexConfig(type="ivfpq", pq_m=8, ivf_nlist=64, ivf_nprobe=1),
    }
    out = {}
    for kind, cfg in configs.items():
        out[kind] = build_collection(root, kind, docs, SEL_DIM, cfg)
        assert out[kind].manifest.index_built == kind
    return out


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_filter_matching_one_percent_still_returns_k_hits(
    selective: dict[str, Collection], unit_vectors: Callable, kind: str
) -> None:
    coll = selective[kind]
    vecs = unit_vectors(SEL_N, SEL_DIM, seed=21)
    for seed in range(5):
        qv = unit_vectors(1, SEL_DIM, seed=1000 + seed)[0]
        group = seed * 17 % 100
        members = [i for i in range(SEL_N) if i % 100 == group]
        assert len(members) == 20
        exact = sorted(members, key=lambda i: -float(vecs[i] @ qv))[:10]
        hits = coll.search(vector=qv, k=10, filter={"group": group}, mode="dense")
        assert len(hits) == 10
        assert all(h.metadata["group"] == group for h in hits)
        # Few matching documents are scanned exactly, whatever the index type.
        assert [h.id for h in hits] == [f"s{i}" for i in exact]
        hybrid = coll.search(vector=qv, query="shared text", k=10, filter={"group": group}, mode="hybrid")
        assert len(hybrid) == 10
        assert all(h.metadata["group"] == group for h in hybrid)
        sparse = coll.search(query="shared text", k=10, filter={"group": group}, mode="sparse")
        assert len(sparse) == 10
        assert all(h.metadata["group"] == group for h in sparse)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_broad_filter_keeps_to_the_filter(
    selective: dict[str, Collection], unit_vectors: Callable, kind: str
) -> None:
    qv = unit_vectors(1, SEL_DIM, seed=7)[0]
    hits = selective[kind].search(
        vector=qv, k=50, filter={"even": True, "group": {"$nin": [0, 2, 4]}}, mode="dense"
    )
    assert len(hits) == 50
    assert all(h.metadata["even"] is True and h.metadata["group"] not in (0, 2, 4) for h in hits)


def test_selective_filter_results_agree_across_index_types(
    selective: dict[str, Collection], unit_vectors: Callable
) -> None:
    qv = unit_vectors(1, SEL_DIM, seed=8)[0]
    spec = {"group": {"$in": [5, 6]}}
    results = {
        kind: [h.id for h in c.search(vector=qv, k=10, filter=spec, mode="dense")]
        for kind, c in selective.items()
    }
    assert results["hnsw"] == results["flat"]
    assert results["ivfpq"] == results["flat"]
    scores = {
        kind: np.array([h.score for h in c.search(vector=qv, k=10, filter=spec, mode="dense")])
        for kind, c in selective.items()
    }
    np.testing.assert_allclose(scores["hnsw"], scores["flat"], atol=1e-5)
    np.testing.assert_allclose(scores["ivfpq"], scores["flat"], atol=1e-5)
