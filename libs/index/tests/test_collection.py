"""Loading a version (checksums) and searching it: dense, sparse and hybrid, scores and thresholds.

Where meaning matters the vectors come from the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from omnirag.index import (
    Collection,
    CorruptVersion,
    Document,
    EmbeddingInfo,
    IndexConfig,
    ModeUnavailable,
    VersionWriter,
    open_current,
)
from omnirag.index.collection import DENSE_WEIGHT, dense_weight
from omnirag.index.store import version_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

ENGLISH = {
    "password": "To reset your password, open Settings, choose Security and click 'Forgot password'. "
    "A reset link is emailed to you.",
    "holidays": "Our office is closed on public holidays; support tickets are answered the next "
    "business day.",
    "eiffel": "The Eiffel Tower in Paris was completed in 1889 and is about 330 metres tall.",
    "photosynthesis": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose "
    "and oxygen.",
    "invoices": "Invoices can be downloaded as PDF files from the Billing page of your account.",
    "python": "Python lists are mutable sequences, while tuples are immutable.",
    "wall": "The Great Wall stretches for thousands of kilometres across northern China.",
    "pandas": "Giant pandas live in the mountains of Sichuan and eat mostly bamboo.",
    "cancel": "To cancel your subscription, go to Billing and press 'Cancel plan'; "
    "access continues until the end of the period.",
    "shanghai": "Shanghai is one of the largest cities in China, at the mouth of the Yangtze River.",
    "coffee": "Espresso is brewed by forcing hot water through finely ground coffee beans.",
    "marathon": "A marathon is a long-distance foot race of 42.195 kilometres.",
}

CHINESE = {
    "zh-wall": "长城是中国古代的军事防御工程，横跨中国北方数千公里。",
    "zh-panda": "大熊猫生活在四川的山区，主要以竹子为食。",
    "zh-shanghai": "上海位于长江入海口，是中国最大的城市之一。",
    "zh-palace": "故宫位于北京中心，是明清两代的皇家宫殿。",
    "zh-password": "重置密码：打开设置，选择安全，然后点击忘记密码。",
    "zh-eiffel": "埃菲尔铁塔位于巴黎，建成于1889年。",
    "zh-tea": "绿茶是中国最常见的茶，用刚采摘的茶叶制成。",
}


def make_docs(texts: dict[str, str], vecs: np.ndarray) -> list[Document]:
    return [
        Document(
            id=k,
            text=t,
            metadata={"topic": k, "lang": "zh" if k.startswith("zh-") else "en"},
            vector=vecs[i],
            content_hash=k,
        )
        for i, (k, t) in enumerate(texts.items())
    ]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, embed: Callable, build_collection: Callable
) -> Collection:
    """English and Chinese documents, MiniLM vectors, an English-only embedding model."""
    texts = {**ENGLISH, **CHINESE}
    vecs = embed(list(texts.values()))
    return build_collection(
        tmp_path_factory.mktemp("idx"), "corpus", make_docs(texts, vecs), 384, model=MINILM, languages=["en"]
    )


@pytest.fixture(scope="module")
def q(embed: Callable) -> Callable[[str], np.ndarray]:
    return lambda text: embed([text])[0]


def ids(hits: list) -> list[str]:
    return [h.id for h in hits]


# --- dense ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How do I change my login credentials?", "password"),
        ("Where can I get a copy of my bill?", "invoices"),
        ("What do bears in China eat?", "pandas"),
        ("How tall is the famous iron landmark in France?", "eiffel"),
        ("How do plants make food from light?", "photosynthesis"),
    ],
)
def test_dense_search_finds_the_document_that_answers(
    corpus: Collection, q: Callable, question: str, expected: str
) -> None:
    hits = corpus.search(vector=q(question), k=3, mode="dense")
    assert hits[0].id == expected
    assert len(hits) == 3


def test_dense_scores_are_cosine_similarities(corpus: Collection, q: Callable, embed: Callable) -> None:
    qv = q("cancel my subscription")
    hits = corpus.search(vector=qv, k=len(ENGLISH) + len(CHINESE), mode="dense")
    assert len(hits) == corpus.count == 19
    assert hits[0].id == "cancel"
    texts = {**ENGLISH, **CHINESE}
    cosine = dict(zip(texts, embed(list(texts.values())) @ qv, strict=True))
    for h in hits:
        assert h.dense_score == h.score
        assert h.sparse_score is None
        assert h.text == texts[h.id]
        assert h.metadata == {"topic": h.id, "lang": "zh" if h.id.startswith("zh-") else "en"}
        assert h.score == pytest.approx(float(cosine[h.id]), abs=1e-4)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_score_threshold_cuts_the_ranking(corpus: Collection, q: Callable) -> None:
    qv = q("How do I reset my password?")
    full = corpus.search(vector=qv, k=10, mode="dense")
    threshold = (full[1].score + full[2].score) / 2
    cut = corpus.search(vector=qv, k=10, mode="dense", score_threshold=threshold)
    assert ids(cut) == ids(full[:2])
    assert all(h.score >= threshold for h in cut)
    assert corpus.search(vector=qv, k=10, mode="dense", score_threshold=full[0].score + 1e-3) == []
    assert ids(corpus.search(vector=qv, k=10, mode="dense", score_threshold=-1.0)) == ids(full)
    # Sparse and hybrid too.
    sparse = corpus.search(query="password reset link", k=10, mode="sparse")
    assert sparse[0].id == "password"
    assert ids(
        corpus.search(query="password reset link", k=10, mode="sparse", score_threshold=sparse[0].score)
    ) == ["password"]
    hybrid = corpus.search(vector=qv, query="reset my password", k=10, mode="hybrid", score_threshold=0.9)
    assert ids(hybrid) == ["password"]


def test_k_larger_than_the_collection(corpus: Collection, q: Callable) -> None:
    assert len(corpus.search(vector=q("anything"), k=1000, mode="dense")) == 19
    assert len(corpus.search(vector=q("anything"), query="billing", k=1000, mode="hybrid")) == 19
    # Sparse returns only documents that share a word with the query.
    assert ids(corpus.search(query="billing", k=1000, mode="sparse")) in (
        ["invoices", "cancel"],
        ["cancel", "invoices"],
    )


# --- sparse -----------------------------------------------------------------------------------------


def test_sparse_search_scores_and_fields(corpus: Collection) -> None:
    hits = corpus.search(query="Yangtze river cities", k=5, mode="sparse")
    assert hits[0].id == "shanghai"
    for h in hits:
        assert h.sparse_score == h.score > 0
        assert h.dense_score is None
    assert corpus.search(query="zzzz qqqq", mode="sparse") == []


# --- hybrid -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How do I reset my password?", "password"),
        ("cancel plan billing", "cancel"),
        ("Where can I get a copy of my bill?", "invoices"),
        ("What do giant pandas eat?", "pandas"),
        ("How long is a marathon race?", "marathon"),
    ],
)
def test_hybrid_ranks_the_relevant_english_document_first(
    corpus: Collection, q: Callable, question: str, expected: str
) -> None:
    hits = corpus.search(vector=q(question), query=question, k=5, mode="hybrid")
    assert hits[0].id == expected
    assert hits[0].dense_score is not None and hits[0].sparse_score is not None
    assert 0.0 <= hits[-1].score <= hits[0].score <= 1.0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_mixes_normalized_dense_and_sparse_scores(corpus: Collection, q: Callable) -> None:
    question = "How do I reset my password?"
    hits = corpus.search(vector=q(question), query=question, k=19, mode="hybrid")
    # Every document is a candidate here, so min and max are over all of them: dense is min-max
    # normalized, BM25 divided by the query's ceiling (the sum of its terms' best scores).
    best_dense = max(h.dense_score for h in hits)
    worst_dense = min(h.dense_score for h in hits)
    best_sparse = max(h.sparse_score for h in hits)
    ceiling = corpus.sparse_ceiling(question)
    assert 0 < best_sparse <= ceiling + 1e-6
    for h in hits:
        expected = (
            DENSE_WEIGHT * (h.dense_score - worst_dense) / (best_dense - worst_dense)
            + (1 - DENSE_WEIGHT) * h.sparse_score / ceiling
        )
        assert h.score == pytest.approx(expected, abs=1e-5)


def test_hybrid_falls_back_to_the_part_it_can_run(corpus: Collection, q: Callable) -> None:
    qv = q("pandas bamboo")
    assert ids(corpus.search(vector=qv, k=5, mode="hybrid")) == ids(
        corpus.search(vector=qv, k=5, mode="dense")
    )
    assert ids(corpus.search(query="pandas bamboo", k=5, mode="hybrid")) == ids(
        corpus.search(query="pandas bamboo", k=5, mode="sparse")
    )
    # A query with no searchable word ("the", punctuation) leaves the dense part to rank.
    hybrid = corpus.search(vector=qv, query="the ?!", k=5, mode="hybrid")
    assert ids(hybrid) == ids(corpus.search(vector=qv, k=5, mode="dense"))
    assert all(h.sparse_score == 0 for h in hybrid)


def test_chinese_query_with_an_english_only_model_ranks_like_bm25(corpus: Collection, q: Callable) -> None:
    question = "中国最大的城市在哪里？"
    assert dense_weight(question, corpus.manifest.embedding.languages) == 0.0
    sparse = corpus.search(query=question, k=19, mode="sparse")
    hybrid = corpus.search(vector=q(question), query=question, k=19, mode="hybrid")
    assert sparse[0].id == "zh-shanghai"
    assert len(sparse) >= 3  # several documents share a word: the order is meaningful
    assert len({round(h.score, 6) for h in sparse}) == len(sparse)
    # The documents BM25 finds come first, in BM25's order, scored by BM25 alone ...
    assert ids(hybrid[: len(sparse)]) == ids(sparse)
    for h, s in zip(hybrid, sparse, strict=False):
        assert h.score == pytest.approx(s.score / corpus.sparse_ceiling(question), abs=1e-5)
    # ... and the rest follows by dense score only.
    rest = hybrid[len(sparse) :]
    assert len(rest) == 19 - len(sparse)
    assert all(h.sparse_score == 0 and h.score == 0 for h in rest)
    assert [h.dense_score for h in rest] == sorted((h.dense_score for h in rest), reverse=True)


@pytest.mark.parametrize(
    ("question", "expected"),
    [("大熊猫吃什么？", "zh-panda"), ("故宫在哪里", "zh-palace"), ("怎么重置密码", "zh-password")],
)
def test_chinese_query_finds_the_chinese_answer_in_hybrid_search(
    corpus: Collection, q: Callable, question: str, expected: str
) -> None:
    assert corpus.search(query=question, k=3, mode="sparse")[0].id == expected
    assert corpus.search(vector=q(question), query=question, k=3, mode="hybrid")[0].id == expected


@pytest.mark.parametrize(
    ("query", "languages", "weight"),
    [
        ("How do I reset my password?", ["en"], DENSE_WEIGHT),
        ("大熊猫吃什么", ["en"], 0.0),
        ("大熊猫吃什么", ["en", "zh"], DENSE_WEIGHT),
        ("大熊猫吃什么", ["zh-Hans"], DENSE_WEIGHT),
        ("パンダは何を食べますか", ["ja"], DENSE_WEIGHT),
        ("대왕판다는 무엇을 먹나요", ["en"], 0.0),
        ("大熊猫吃什么", ["multilingual"], DENSE_WEIGHT),
        ("How do I reset my password?", ["zh"], 0.0),
        ("What is 故宫?", ["en"], DENSE_WEIGHT),  # mostly English
        ("大熊猫吃什么", [], DENSE_WEIGHT),  # languages unknown: do not guess
        ("", ["en"], DENSE_WEIGHT),
        # A multilingual model covers English as well as Chinese: its dense ranking must count.
        ("How do I reset my password?", ["multilingual"], DENSE_WEIGHT),
    ],
)
def test_dense_weight_by_query_language(query: str, languages: list[str], weight: float) -> None:
    assert dense_weight(query, languages) == weight


def test_hybrid_with_l2_metric_ranks_like_inner_product(tmp_path: Path, build_collection: Callable) -> None:
    """On normalized vectors L2 and inner product order documents identically; hybrid must too."""
    e = np.eye(8, dtype=np.float32)
    docs = [
        # The exact vector match, mentioning the query word once among many others.
        Document("near", "apple pie recipe with cinnamon sugar butter flour and eggs", {}, e[0]),
        # Orthogonal to the query, but the query word is all it says.
        Document("far", "apple", {}, e[1]),
        Document("other", "nothing in common", {}, (e[0] + e[1]) / np.sqrt(2)),
    ]
    by_metric = {}
    for metric in ("ip", "l2"):
        coll = build_collection(tmp_path, f"m-{metric}", docs, 8, IndexConfig(metric=metric))
        assert ids(coll.search(vector=e[0], k=3, mode="dense")) == ["near", "other", "far"]
        by_metric[metric] = ids(coll.search(vector=e[0], query="apple", k=3, mode="hybrid"))
    assert by_metric["ip"][0] == "near"
    assert by_metric["l2"] == by_metric["ip"]


# --- errors -----------------------------------------------------------------------------------------


def test_modes_that_cannot_run_are_refused(corpus: Collection, q: Callable) -> None:
    with pytest.raises(ModeUnavailable, match="vector"):
        corpus.search(query="password", mode="dense")
    with pytest.raises(ModeUnavailable, match="text"):
        corpus.search(vector=q("password"), mode="sparse")
    with pytest.raises(ModeUnavailable, match="text"):
        corpus.search(vector=q("password"), query="", mode="sparse")
    with pytest.raises(ModeUnavailable, match="dimensions"):
        corpus.search(vector=np.ones(128, dtype=np.float32), mode="dense")
    with pytest.raises(ModeUnavailable, match="dimensions"):
        corpus.search(vector=np.ones(128, dtype=np.float32), query="password", mode="hybrid")
    assert issubclass(ModeUnavailable, ValueError)


def test_a_query_vector_as_a_list_or_2d_array_is_accepted(corpus: Collection, q: Callable) -> None:
    qv = q("Where is the Eiffel Tower?")
    expected = ids(corpus.search(vector=qv, k=3, mode="dense"))
    assert ids(corpus.search(vector=qv.tolist(), k=3, mode="dense")) == expected
    assert ids(corpus.search(vector=qv.reshape(1, -1).astype(np.float64), k=3, mode="dense")) == expected


# --- checksums --------------------------------------------------------------------------------------


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def published(tmp_path: Path, unit_vectors: Callable) -> tuple[Path, Path]:
    vecs = unit_vectors(200, 32, seed=3)
    docs = [Document(f"d{i}", f"text number {i}", {"i": i}, vecs[i], f"h{i}") for i in range(200)]
    with VersionWriter(tmp_path, "kb", EmbeddingInfo(model="test/random-32", dimension=32)) as w:
        w.upsert(docs)
        version = w.commit()
    return tmp_path, version_path(tmp_path, "kb", version)


@pytest.mark.parametrize("name", ["vectors.faiss", "docs.sqlite", "postings/ids.npy", "postings/terms.json"])
def test_a_flipped_byte_is_refused(published: tuple[Path, Path], name: str) -> None:
    root, vdir = published
    assert Collection.open(vdir, verify=True).count == 200
    segment = only_segment(vdir)
    flip_byte(segment / name)
    with pytest.raises(CorruptVersion, match=name):
        Collection.open(vdir, verify=True)
    with pytest.raises(CorruptVersion):
        open_current(root, "kb", verify=True)


def only_segment(vdir: Path) -> Path:
    manifest = json.loads((vdir / "manifest.json").read_text())
    [ref] = manifest["segments"]
    return vdir.parent.parent / "segments" / ref["id"]


def test_every_sparse_file_is_checked(published: tuple[Path, Path]) -> None:
    _, vdir = published
    sparse_files = sorted(p for p in (only_segment(vdir) / "postings").iterdir() if p.is_file())
    assert len(sparse_files) == 6  # the vocabulary and five arrays
    for path in sparse_files:
        original = path.read_bytes()
        flip_byte(path, at=0.9)
        with pytest.raises(CorruptVersion):
            Collection.open(vdir, verify=True)
        path.write_bytes(original)
    assert Collection.open(vdir, verify=True).count == 200


def test_missing_extra_or_truncated_files_are_refused(published: tuple[Path, Path]) -> None:
    _, vdir = published
    (vdir / "extra.bin").write_bytes(b"x")
    with pytest.raises(CorruptVersion, match=r"extra\.bin"):
        Collection.open(vdir, verify=True)
    assert Collection.open(vdir, verify=False).count == 200  # unverified: loads what is there
    (vdir / "extra.bin").unlink()

    faiss_file = only_segment(vdir) / "vectors.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:-100])
    with pytest.raises(CorruptVersion):
        Collection.open(vdir, verify=True)
    faiss_file.unlink()
    with pytest.raises(CorruptVersion):
        Collection.open(vdir, verify=True)
    (vdir.parent.parent / "segments").rename(vdir.parent.parent / "elsewhere")
    with pytest.raises(CorruptVersion):
        Collection.open(vdir, verify=False)


@pytest.mark.parametrize("manifest", [None, b"", b"{not json", b'{"collection": "kb"}'])
def test_a_missing_or_unreadable_manifest_is_refused(
    published: tuple[Path, Path], manifest: bytes | None
) -> None:
    _, vdir = published
    if manifest is None:
        (vdir / "manifest.json").unlink()
    else:
        (vdir / "manifest.json").write_bytes(manifest)
    with pytest.raises(CorruptVersion, match="manifest"):
        Collection.open(vdir, verify=True)


def test_loading_and_searching_leaves_the_files_as_they_were(
    published: tuple[Path, Path], unit_vectors: Callable
) -> None:
    root, vdir = published
    before = {p: p.read_bytes() for p in vdir.rglob("*") if p.is_file()}
    coll = open_current(root, "kb")
    assert coll is not None
    qv = unit_vectors(1, 32, seed=3)[0]
    assert coll.search(vector=qv, k=1, mode="dense")[0].id == "d0"
    assert coll.search(query="number 17", k=1, mode="sparse")[0].id == "d17"
    coll.search(vector=qv, query="number 17", k=5, filter={"i": {"$in": [1, 2, 17]}})
    coll.close()
    after = {p: p.read_bytes() for p in vdir.rglob("*") if p.is_file()}
    assert after == before
