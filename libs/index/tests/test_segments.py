"""Segmented collections (issue 17): a commit writes what changed, search over the segments equals
search over one index of the same live chunks, format 1 versions are read and installed as
segments, compaction merges segments without losing a deletion made meanwhile, a reload opens only
new segments, and unlisted segments are pruned."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from omnirag.index import (
    Collection,
    CorruptVersion,
    Document,
    EmbeddingInfo,
    IndexConfig,
    Manifest,
    VersionWriter,
    open_current,
    prune_versions,
    publish,
    read_current,
)
from omnirag.index import dense as dense_index
from omnirag.index.collection import SegmentCache
from omnirag.index.compaction import TieredPolicy, compact
from omnirag.index.docstore import DocStore
from omnirag.index.manifest import SegmentRef, hash_tree
from omnirag.index.sparse import TOKENIZER_NAME, SparseIndex
from omnirag.index.store import TMP_DIR, new_version_id, version_path

DIM = 16
EMB = EmbeddingInfo(model="test/random-16", dimension=DIM, languages=["en"])
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
]


def vec(seed: int, salt: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed * 7919 + salt).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def doc(i: int, salt: int = 0, **meta: object) -> Document:
    rng = random.Random(i * 31 + salt)
    text = " ".join(rng.choices(WORDS, k=rng.randint(2, 12))) + f" item{i}"
    return Document(
        id=f"c{i}",
        text=text,
        metadata={"source": f"f{i % 5}.md", "doc_id": f"d{i % 9}", "group": i % 3, **meta},
        vector=vec(i, salt),
        content_hash=f"h{i}-{salt}",
    )


def commit(root: Path, upserts: list[Document], deletes: list[str] = (), name: str = "kb") -> str:
    with VersionWriter(root, name, EMB) as w:
        if upserts:
            w.upsert(upserts)
        if deletes:
            w.delete(list(deletes))
        return w.commit()


def from_scratch(root: Path, chunks: dict[str, Document]) -> Collection:
    """One version, one segment, of exactly ``chunks``: the reference a segmented one must equal."""
    with VersionWriter(root, "ref", EMB, base=None) as w:
        w.upsert(list(chunks.values()))
        w.commit()
    coll = open_current(root, "ref")
    assert coll is not None and len(coll.segments) == 1
    return coll


def same_results(got: Collection, want: Collection, queries: int = 12) -> None:
    """Every mode (and a filter) gives the same ids and scores on both."""
    assert got.count == want.count
    assert got.chunks() == want.chunks()
    for q in range(queries):
        v = vec(1000 + q)
        text = " ".join(random.Random(q).choices(WORDS, k=3))
        for kwargs in (
            {"vector": v, "mode": "dense"},
            {"query": text, "mode": "sparse"},
            {"vector": v, "query": text, "mode": "hybrid"},
            {"vector": v, "query": text, "mode": "hybrid", "filter": {"group": 1}},
            {"vector": v, "mode": "dense", "filter": {"source": "f2.md"}},
        ):
            a = got.search(k=7, **kwargs)
            b = want.search(k=7, **kwargs)
            assert [h.id for h in a] == [h.id for h in b], kwargs
            assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-6, abs=1e-7), kwargs
    assert got.sparse_ceiling("alpha beta item3") == pytest.approx(want.sparse_ceiling("alpha beta item3"))
    assert [d.as_dict() for d in got.documents(limit=500).documents] == [
        d.as_dict() for d in want.documents(limit=500).documents
    ]


def du(path: Path) -> int:
    """Bytes on disk under ``path``, a file linked twice counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# --- commits write what changed --------------------------------------------------------------------


def test_a_one_chunk_commit_writes_one_small_segment_and_shares_the_rest(tmp_path: Path) -> None:
    commit(tmp_path, [doc(i) for i in range(400)])
    base = du(tmp_path / "kb")
    first = open_current(tmp_path, "kb")
    assert first is not None and [s.count for s in first.segments] == [400]
    commit(tmp_path, [doc(7, salt=1)])  # one chunk changed
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert [s.count for s in coll.segments] == [400, 1]
    assert coll.segments[0].path == first.segments[0].path  # the same files, not a copy
    ref = coll.manifest.segments[0]
    assert (ref.deleted, coll.manifest.counts) == (1, {"documents": 400, "segments": 2, "deleted": 1})
    # A few pages of fixed cost (SQLite, FAISS, postings headers), whatever the collection's size.
    assert du(tmp_path / "kb") - base < 64 * 1024
    assert coll.chunks()["c7"][0] == doc(7, salt=1).text
    assert coll.search(vector=vec(7, 1), k=1, mode="dense")[0].id == "c7"
    assert coll.search(vector=vec(7), k=1, mode="dense")[0].score < 0.99  # the old vector is gone


def test_segments_with_updates_and_deletions_search_as_one_index(tmp_path: Path) -> None:
    live: dict[str, Document] = {}
    rng = random.Random(5)
    for round_ in range(6):
        ups = [doc(i, salt=round_) for i in rng.sample(range(300), 60)]
        dels = [f"c{i}" for i in rng.sample(range(300), 15)]
        commit(tmp_path, ups, [d for d in dels if d not in {u.id for u in ups}])
        live.update({u.id: u for u in ups})
        for d in dels:
            if d not in {u.id for u in ups}:
                live.pop(d, None)
    coll = open_current(tmp_path, "kb")
    assert coll is not None and len(coll.segments) > 1
    assert coll.manifest.counts["deleted"] > 0
    same_results(coll, from_scratch(tmp_path, live))


def test_a_retag_moves_the_chunk_into_the_new_segment(tmp_path: Path) -> None:
    commit(tmp_path, [doc(i) for i in range(50)])
    with VersionWriter(tmp_path, "kb", EMB) as w:
        w.retag(["c3", "c4"], {"group": 99})
        assert {c.id: c.metadata["group"] for c in w.chunks() if c.id in {"c3", "c4"}} == {"c3": 99, "c4": 99}
        w.commit()
    coll = open_current(tmp_path, "kb")
    assert coll is not None and [s.count for s in coll.segments] == [50, 2]
    assert {h.id for h in coll.search(vector=vec(3), k=50, mode="dense", filter={"group": 99})} == {
        "c3",
        "c4",
    }
    assert coll.chunks()["c3"][0] == doc(3).text  # text and vector kept
    assert coll.search(vector=vec(3), k=1, mode="dense")[0].id == "c3"


def test_a_segment_whose_chunks_are_all_deleted_is_no_longer_listed(tmp_path: Path) -> None:
    commit(tmp_path, [doc(i) for i in range(10)])
    commit(tmp_path, [doc(i) for i in range(10, 13)])
    commit(tmp_path, [], [f"c{i}" for i in range(10, 13)])
    coll = open_current(tmp_path, "kb")
    assert coll is not None and [s.count for s in coll.segments] == [10]
    with VersionWriter(tmp_path, "kb", EMB) as w:
        assert w.delete([f"c{i}" for i in range(10)] + ["c99"]) == 10
        assert w.count() == 0
        w.commit()
    empty = open_current(tmp_path, "kb")
    assert empty is not None and empty.count == 0 and empty.segments == []
    assert empty.search(vector=vec(1), query="alpha", k=3) == []


def test_a_writer_sees_its_own_changes_across_segments(tmp_path: Path) -> None:
    commit(tmp_path, [doc(i) for i in range(20)])
    commit(tmp_path, [doc(i, salt=1) for i in range(5)])
    with VersionWriter(tmp_path, "kb", EMB) as w:
        assert w.count() == 20
        assert w.hashes()["c2"] == "h2-1" and w.hashes()["c9"] == "h9-0"
        w.upsert([doc(2, salt=2)])
        assert w.delete(["c2", "c9"]) == 2  # one from the new segment, one from an old one
        assert w.count() == 18 and "c2" not in w.hashes() and "c9" not in w.hashes()
        chunks = w.document_chunks(["d0"])
        assert sorted(chunks["d0"]) == ["c0", "c18"]
        w.abort()


# --- format 1 ----------------------------------------------------------------------------------------


def write_format1(root: Path, name: str, docs: list[Document]) -> str:
    """A version as omnirag wrote them before segments (format 1), written the way it was."""
    version = new_version_id()
    tmp = root / name / TMP_DIR / version
    tmp.mkdir(parents=True)
    store = DocStore.create(tmp / "docs.sqlite", DIM)
    store.upsert(docs)
    index, built = dense_index.build(store.iter_vectors(), DIM, IndexConfig(), len(docs))
    dense_index.save(index, tmp / "vectors.faiss")
    SparseIndex.build(store.iter_texts()).save(tmp / "sparse")
    store.close()
    manifest = Manifest(
        format_version=1,
        collection=name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        embedding=EMB,
        index=IndexConfig(),
        index_built=built,
        counts={"documents": len(docs)},
        sparse_tokenizer=TOKENIZER_NAME,
        files=hash_tree(tmp),
    )
    (tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    (root / name / "versions").mkdir(parents=True, exist_ok=True)
    tmp.rename(version_path(root, name, version))
    publish(root, name, version)
    return version


def test_a_format1_version_is_read_and_then_installed_as_a_segment(tmp_path: Path) -> None:
    docs = [doc(i) for i in range(120)]
    old = write_format1(tmp_path, "kb", docs)
    legacy = open_current(tmp_path, "kb", verify=True)
    assert legacy is not None and legacy.manifest.format_version == 1
    reference = from_scratch(tmp_path, {d.id: d for d in docs})
    same_results(legacy, reference)
    # Its bm25s files and the postings built from its texts score alike.
    bm25s = SparseIndex.load(version_path(tmp_path, "kb", old) / "sparse")
    want = dict(zip(bm25s.ids.tolist(), bm25s.scores("alpha gamma item4").tolist(), strict=True))
    for hit in legacy.search(query="alpha gamma item4", k=20, mode="sparse"):
        assert hit.score == pytest.approx(want[hit.int_id], rel=1e-6)
    # The next commit installs it as a segment: its files linked, not copied.
    commit(tmp_path, [doc(3, salt=1)])
    coll = open_current(tmp_path, "kb")
    assert coll is not None and coll.manifest.format_version == 2
    assert [s.count for s in coll.segments] == [120, 1]
    installed = coll.segments[0].path / "docs.sqlite"
    assert os.path.samefile(installed, version_path(tmp_path, "kb", old) / "docs.sqlite")
    live = {d.id: d for d in docs} | {"c3": doc(3, salt=1)}
    same_results(coll, from_scratch(tmp_path, live))


# --- compaction ----------------------------------------------------------------------------------------


def test_the_tiered_policy_merges_a_full_tier_and_mostly_deleted_segments() -> None:
    policy = TieredPolicy(fanout=4, min_segment=10)
    small = [SegmentRef(id=f"s{i}", info_sha256="x", documents=3) for i in range(3)]
    assert policy.plan(small) == []
    assert policy.plan([*small, SegmentRef(id="s9", info_sha256="x", documents=1)]) == [
        "s0",
        "s1",
        "s2",
        "s9",
    ]
    big = SegmentRef(id="big", info_sha256="x", documents=1000)
    assert policy.tier(1000) == 3 and policy.tier(9) == 0 and policy.tier(40) == 1
    assert policy.plan([big, *small]) == []
    assert policy.plan([big.model_copy(update={"deleted": 600}), *small]) == ["big"]
    # A large segment of the floor tier is not rewritten with tiny ones: the smallest go first.
    floor = SegmentRef(id="floor", info_sha256="x", documents=39)
    tiny = [SegmentRef(id=f"t{i}", info_sha256="x", documents=1) for i in range(5)]
    assert policy.tier(39) == policy.tier(1) == 0
    assert policy.plan([floor, *tiny]) == ["t0", "t1", "t2", "t3"]


def test_compaction_merges_segments_into_one_that_searches_the_same(tmp_path: Path) -> None:
    for round_ in range(5):
        ups = [doc(i, salt=round_) for i in range(round_ * 30, round_ * 30 + 40)]
        commit(tmp_path, ups, [f"c{round_}"])
    before = open_current(tmp_path, "kb")
    assert before is not None and len(before.segments) == 5
    result = compact(tmp_path, "kb", full=True)
    assert result.version is not None and len(result.merged) == 5 and result.chunks == before.count
    after = open_current(tmp_path, "kb", verify=True)
    assert after is not None and len(after.segments) == 1 and after.manifest.counts["deleted"] == 0
    same_results(after, before)
    assert compact(tmp_path, "kb", full=True).version is None  # nothing left to merge
    # Unlisted segments go once the grace period is over; the served ones stay.
    assert prune_versions(tmp_path, "kb", keep=1, grace_seconds=3600) == []
    old = time.time() - 7200
    for p in (tmp_path / "kb").rglob("*"):
        os.utime(p, (old, old))
    removed = prune_versions(tmp_path, "kb", keep=1, grace_seconds=3600)
    assert sorted(r for r in removed if r.startswith("segments/")) == sorted(
        f"segments/{s}" for s in result.merged
    )
    same_results(open_current(tmp_path, "kb", verify=True), before)


def test_a_deletion_made_while_compaction_builds_is_kept(tmp_path: Path) -> None:
    for round_ in range(3):
        commit(tmp_path, [doc(i) for i in range(round_ * 20, round_ * 20 + 20)])

    @contextlib.contextmanager
    def writer_meanwhile() -> Iterator[None]:
        # A writer commits after the merge read the segments and before the swap takes the lock.
        commit(tmp_path, [doc(100)], ["c5", "c25"])
        yield

    result = compact(tmp_path, "kb", full=True, lock=writer_meanwhile)
    assert result.version == read_current(tmp_path, "kb")
    coll = open_current(tmp_path, "kb", verify=True)
    assert coll is not None
    ids = set(coll.chunks())
    assert "c5" not in ids and "c25" not in ids and "c100" in ids and len(ids) == 59
    assert {h.id for h in coll.search(vector=vec(5), k=60, mode="dense")} == ids
    assert [s.count for s in coll.segments] == [60, 1]  # the merged one (2 deleted) and the writer's


def test_compaction_gives_up_when_a_merged_segment_is_gone(tmp_path: Path) -> None:
    for round_ in range(2):
        commit(tmp_path, [doc(i) for i in range(round_ * 5, round_ * 5 + 5)])

    @contextlib.contextmanager
    def other_compaction() -> Iterator[None]:
        compact(tmp_path, "kb", full=True)
        yield

    result = compact(tmp_path, "kb", full=True, lock=other_compaction)
    assert result.version is None and result.gave_up == "a merged segment is no longer listed"
    assert open_current(tmp_path, "kb", verify=True).count == 10


# --- readers ---------------------------------------------------------------------------------------------


def test_a_reload_opens_only_the_new_segment(tmp_path: Path) -> None:
    commit(tmp_path, [doc(i) for i in range(100)])
    cache = SegmentCache()
    first = open_current(tmp_path, "kb", cache=cache)
    assert first is not None and cache.opened == 1
    commit(tmp_path, [doc(1, salt=1)])
    second = open_current(tmp_path, "kb", cache=cache)
    assert second is not None and cache.opened == 2
    assert second.segments[0] is first.segments[0]
    del first
    assert len(cache) == 2


def test_a_damaged_segment_or_deletions_file_is_refused(tmp_path: Path) -> None:
    commit(tmp_path, [doc(i) for i in range(30)])
    version = commit(tmp_path, [doc(2, salt=1)])
    vdir = version_path(tmp_path, "kb", version)
    manifest = json.loads((vdir / "manifest.json").read_text())
    seg = tmp_path / "kb" / "segments" / manifest["segments"][1]["id"]
    (seg / "segment.json").write_text(
        (seg / "segment.json").read_text().replace('"documents": 1', '"documents": 2')
    )
    with pytest.raises(CorruptVersion, match=r"segment\.json"):
        Collection.open(vdir, verify=True)
    manifest["segments"][0]["deletions"] = "../../../etc/passwd"
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError):
        Collection.open(vdir, verify=False)


def test_compaction_gives_up_when_its_segment_was_pruned_while_it_waited(tmp_path: Path) -> None:
    for round_ in range(2):
        commit(tmp_path, [doc(i) for i in range(round_ * 5, round_ * 5 + 5)])

    @contextlib.contextmanager
    def writer_that_prunes() -> Iterator[None]:
        # A writer held the lock past the grace period and pruned what no version lists.
        prune_versions(tmp_path, "kb", grace_seconds=0)
        yield

    before = read_current(tmp_path, "kb")
    result = compact(tmp_path, "kb", full=True, lock=writer_that_prunes)
    assert result.version is None and result.gave_up == "the merged segment was pruned before the swap"
    assert read_current(tmp_path, "kb") == before
    coll = open_current(tmp_path, "kb", verify=True)
    assert coll is not None and coll.count == 10 and len(coll.segments) == 2


@pytest.mark.parametrize("overfetch", [True, False], ids=["overfetch", "selector"])
def test_a_large_segment_and_small_ones_search_as_one_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overfetch: bool
) -> None:
    """The small segments are scanned together in memory, the large one by FAISS (its deletions
    dropped from an over-fetched top-k, or kept out by a selector): merged, the same answers as
    one index, filters and deletions included."""
    if not overfetch:
        monkeypatch.setattr("omnirag.index.collection.OVERFETCH_DELETIONS_MAX", 0)
    live = {d.id: d for d in (doc(i) for i in range(5000))}
    commit(tmp_path, list(live.values()))
    for round_ in range(4):
        ups = [doc(i, salt=round_ + 1) for i in (round_, 100 + round_, 5000 + round_)]
        commit(tmp_path, ups, [f"c{200 + round_}"])
        live.update({u.id: u for u in ups})
        live.pop(f"c{200 + round_}")
    coll = open_current(tmp_path, "kb")
    assert coll is not None and [s.count for s in coll.segments] == [5000, 3, 3, 3, 3]
    same_results(coll, from_scratch(tmp_path, live), queries=6)
