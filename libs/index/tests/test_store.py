"""Versions on disk: writing, incremental updates, publishing, listing and pruning."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from omnirag.index import (
    Collection,
    Document,
    EmbeddingInfo,
    IndexConfig,
    Manifest,
    VersionWriter,
    list_collections,
    open_current,
    prune_versions,
    publish,
    read_current,
)
from omnirag.index.ids import int_id
from omnirag.index.store import VERSION_RE, check_name, new_version_id, version_path

DIM = 16
EMB = EmbeddingInfo(model="test/random-16", dimension=DIM, languages=["en"])


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def doc(i: int, text: str | None = None, **meta: object) -> Document:
    return Document(
        id=f"doc-{i}",
        text=text if text is not None else f"document number {i} about topic{i % 7}",
        metadata={"source": f"file{i % 4}.md", "n": i, **meta},
        vector=vec(i),
        content_hash=f"hash-{i}",
    )


def write(
    root: Path,
    name: str,
    docs: list[Document],
    *,
    deletes: list[str] = (),
    base: str | None = "current",
    embedding: EmbeddingInfo = EMB,
    config: IndexConfig | None = None,
) -> str:
    with VersionWriter(root, name, embedding, config, base=base) as w:
        w.upsert(docs)
        if deletes:
            w.delete(list(deletes))
        return w.commit()


def everything(coll: Collection) -> dict[str, tuple[str, dict]]:
    return dict(coll.chunks())


def stored_vector(coll: Collection, doc_id: str) -> np.ndarray:
    ids, vecs = coll.vectors_for([int_id(doc_id)])
    assert ids.tolist() == [int_id(doc_id)]
    return vecs[0]


# --- writing and reading back ---------------------------------------------------------------------


def test_commit_writes_a_complete_version_and_loads_back(tmp_path: Path) -> None:
    docs = [doc(i) for i in range(50)]
    version = write(tmp_path, "kb", docs)

    assert VERSION_RE.match(version)
    assert (tmp_path / "kb" / "CURRENT").read_text() == version + "\n"
    assert read_current(tmp_path, "kb") == version
    vdir = version_path(tmp_path, "kb", version)
    manifest = Manifest.model_validate_json((vdir / "manifest.json").read_text())
    assert manifest.collection == "kb"
    assert manifest.version == version
    assert manifest.parent is None
    assert manifest.counts == {"documents": 50, "segments": 1, "deleted": 0}
    assert manifest.embedding == EMB
    assert manifest.index_built == "flat"
    assert manifest.sparse_tokenizer == "rjieba+words-v1"
    # The chunks are in one segment the version lists; the version itself holds only its manifest.
    assert manifest.files == {} and "manifest.json" not in manifest.files
    [ref] = manifest.segments
    assert (ref.documents, ref.deleted, ref.deletions) == (50, 0, None)
    sdir = tmp_path / "kb" / "segments" / ref.id
    info = json.loads((sdir / "segment.json").read_text())
    assert {"vectors.faiss", "docs.sqlite", "postings/ids.npy", "postings/terms.json"} <= set(info["files"])
    # No pickle anywhere, no leftovers of the write.
    files = [p.relative_to(sdir).as_posix() for p in sdir.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", "-journal", "-wal"))]
    assert sorted(files) == sorted([*info["files"], "segment.json"])
    assert [p.name for p in vdir.iterdir()] == ["manifest.json"]
    assert list((tmp_path / "kb" / ".tmp").iterdir()) == []

    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert (coll.name, coll.version, coll.count) == ("kb", version, 50)
    assert len(coll.dense_ids()) == 50 and len(coll.sparse_ids()) == 50
    assert everything(coll) == {d.id: (d.text, d.metadata) for d in docs}
    np.testing.assert_array_equal(stored_vector(coll, "doc-7"), vec(7))
    hit = coll.search(vector=vec(7), k=1, mode="dense")[0]
    assert hit.id == "doc-7"
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_upsert_updates_text_metadata_and_vector(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(i) for i in range(20)])
    new_vec = -vec(3)
    updated = Document(
        "doc-3", "completely rewritten about zeppelins", {"source": "new.md", "n": -3}, new_vec, "hash-new"
    )
    with VersionWriter(tmp_path, "kb", EMB) as w:
        w.upsert([updated])
        assert w.count() == 20
        assert w.hashes()["doc-3"] == "hash-new"
        w.commit()
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.count == 20
    assert everything(coll)["doc-3"] == (
        "completely rewritten about zeppelins",
        {"source": "new.md", "n": -3},
    )
    np.testing.assert_array_equal(stored_vector(coll, "doc-3"), new_vec)
    # Dense: the new vector finds it, the old vector no longer does.
    assert coll.search(vector=new_vec, k=1, mode="dense")[0].id == "doc-3"
    old_hit = coll.search(vector=vec(3), k=20, mode="dense")
    assert old_hit[0].id != "doc-3"
    assert old_hit[-1].id == "doc-3"
    assert old_hit[-1].score == pytest.approx(-1.0, abs=1e-5)
    # Sparse: the new words find it, the old ones do not.
    assert [h.id for h in coll.search(query="zeppelins", mode="sparse")] == ["doc-3"]
    assert "doc-3" not in {h.id for h in coll.search(query="number 3", k=20, mode="sparse")}
    # Filters see the new metadata.
    assert [h.id for h in coll.search(vector=vec(0), filter={"source": "new.md"}, mode="dense")] == ["doc-3"]
    assert coll.search(vector=vec(0), filter={"n": 3}, mode="dense") == []


def test_the_same_id_twice_in_one_batch_keeps_the_last(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(1, "first version"), doc(1, "second version")])
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.count == 1
    assert everything(coll)["doc-1"][0] == "second version"


def test_upsert_rejects_a_missing_or_wrong_sized_vector(tmp_path: Path) -> None:
    with VersionWriter(tmp_path, "kb", EMB) as w:
        with pytest.raises(ValueError, match="no vector"):
            w.upsert([Document("a", "text")])
        with pytest.raises(ValueError, match="dims"):
            w.upsert([Document("a", "text", vector=np.ones(DIM + 1, dtype=np.float32))])
        assert w.count() == 0


def test_delete_by_ids_survives_save_and_load(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(i) for i in range(30)])
    with VersionWriter(tmp_path, "kb", EMB) as w:
        assert w.delete(["doc-1", "doc-2", "doc-29", "no-such-doc"]) == 3
        assert w.delete([]) == 0
        assert w.count() == 27
        w.commit()
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    ids = set(everything(coll))
    assert ids == {f"doc-{i}" for i in range(3, 29)} | {"doc-0"}
    assert coll.count == 27
    assert coll.dense_ids() == coll.sparse_ids() == {int_id(i) for i in ids}
    # Gone from every part of the search.
    assert "doc-2" not in {h.id for h in coll.search(vector=vec(2), k=30, mode="dense")}
    assert coll.search(query="number 2", k=30, mode="sparse")[0].id != "doc-2"
    assert "doc-2" not in {h.id for h in coll.search(query="number 2", k=30, mode="sparse")}
    assert "doc-2" not in {h.id for h in coll.search(vector=vec(2), query="number 2", k=30)}


def test_delete_many_ids_in_chunks(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(i) for i in range(1200)])
    with VersionWriter(tmp_path, "kb", EMB) as w:
        assert w.delete([f"doc-{i}" for i in range(1100)]) == 1100
        w.commit()
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert set(everything(coll)) == {f"doc-{i}" for i in range(1100, 1200)}


def test_hashes_for_incremental_indexing(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(i) for i in range(8)])
    with VersionWriter(tmp_path, "kb", EMB) as w:
        assert w.hashes() == {f"doc-{i}": f"hash-{i}" for i in range(8)}
        assert w.hashes("file1.md") == {"doc-1": "hash-1", "doc-5": "hash-5"}
        assert w.hashes("missing.md") == {}


def test_incremental_version_keeps_unchanged_documents(tmp_path: Path) -> None:
    docs = [doc(i) for i in range(40)]
    v1 = write(tmp_path, "kb", docs)
    v2 = write(tmp_path, "kb", [doc(100), doc(5, "changed text")], deletes=["doc-6"])
    assert v2 != v1
    coll2 = open_current(tmp_path, "kb")
    assert coll2 is not None
    assert coll2.manifest.parent == v1
    got = everything(coll2)
    expected = {d.id: (d.text, d.metadata) for d in docs if d.id not in ("doc-5", "doc-6")}
    expected["doc-100"] = (doc(100).text, doc(100).metadata)
    expected["doc-5"] = ("changed text", doc(5).metadata)
    assert got == expected
    for i in (0, 17, 39):  # unchanged documents keep their vectors and hashes
        np.testing.assert_array_equal(stored_vector(coll2, f"doc-{i}"), vec(i))
        assert coll2.search(vector=vec(i), k=1, mode="dense")[0].id == f"doc-{i}"
    with VersionWriter(tmp_path, "kb", EMB) as w:
        assert w.hashes()["doc-17"] == "hash-17"
        assert "doc-6" not in w.hashes()

    # The old version is untouched and still opens, verified, with its own contents.
    coll1 = Collection.open(version_path(tmp_path, "kb", v1), verify=True)
    assert everything(coll1) == {d.id: (d.text, d.metadata) for d in docs}


def test_base_none_starts_from_scratch_and_base_version_from_that_version(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(i) for i in range(5)])
    write(tmp_path, "kb", [doc(i) for i in range(5, 10)])
    v3 = write(tmp_path, "kb", [doc(50)], base=None)
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.version == v3
    assert coll.manifest.parent is None
    assert set(everything(coll)) == {"doc-50"}

    write(tmp_path, "kb", [doc(60)], base=v1)
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.manifest.parent == v1
    assert set(everything(coll)) == {f"doc-{i}" for i in range(5)} | {"doc-60"}


def test_leaving_the_writer_without_commit_discards_everything(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(1)])
    with VersionWriter(tmp_path, "kb", EMB) as w:
        w.upsert([doc(2)])
        assert w.tmp.is_dir()
    assert not w.tmp.exists()
    with pytest.raises(RuntimeError, match="boom"), VersionWriter(tmp_path, "kb", EMB) as w:
        w.upsert([doc(3)])
        raise RuntimeError("boom")
    w2 = VersionWriter(tmp_path, "kb", EMB)
    w2.upsert([doc(4)])
    w2.abort()
    assert read_current(tmp_path, "kb") == v1
    assert [p.name for p in (tmp_path / "kb" / "versions").iterdir()] == [v1]
    assert list((tmp_path / "kb" / ".tmp").iterdir()) == []
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert set(everything(coll)) == {"doc-1"}


def test_an_empty_collection_commits_and_searches_to_nothing(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(1), doc(2)])
    write(tmp_path, "kb", [], deletes=["doc-1", "doc-2"])
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.count == 0
    assert coll.search(vector=vec(1), mode="dense") == []
    assert coll.search(query="document", mode="sparse") == []
    assert coll.search(vector=vec(1), query="document", mode="hybrid") == []
    # And a new version can be built on top of the empty one.
    write(tmp_path, "kb", [doc(3)])
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert [h.id for h in coll.search(vector=vec(3), mode="dense")] == ["doc-3"]


def test_writer_with_another_model_or_dimension_than_the_parent_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(1)])
    with pytest.raises(ValueError, match="built with"):
        VersionWriter(tmp_path, "kb", EmbeddingInfo(model="other/model", dimension=DIM))
    with pytest.raises(ValueError, match="built with"):
        VersionWriter(tmp_path, "kb", EmbeddingInfo(model=EMB.model, dimension=DIM * 2))
    # From scratch it is allowed.
    other = EmbeddingInfo(model="other/model", dimension=8)
    with VersionWriter(tmp_path, "kb", other, base=None) as w:
        w.upsert([Document("x", "x", vector=np.ones(8, dtype=np.float32) / np.sqrt(8))])
        w.commit()
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.manifest.embedding == other


def test_a_refused_writer_leaves_no_temporary_directory(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(1)])
    with pytest.raises(ValueError):
        VersionWriter(tmp_path, "kb", EmbeddingInfo(model="other/model", dimension=DIM))
    # The constructor raised, so no `with` block can clean up after it: it must do so itself.
    assert list((tmp_path / "kb" / ".tmp").iterdir()) == []


# --- names and versions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "Docs", "-docs", "_docs", ".tmp", "..", "../etc", "a/b", "a b", "docs.v2", "文档", "a" * 64, "x\n"],
)
def test_bad_collection_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="collection name"):
        check_name(name)
    with pytest.raises(ValueError, match="collection name"):
        VersionWriter(tmp_path, name, EMB)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "0", "docs", "kb_2-faq", "a" * 63])
def test_good_collection_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert check_name(name) == name
    write(tmp_path, name, [doc(1)])
    assert list_collections(tmp_path) == [name]


def test_version_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_version_id() for _ in range(200)]
    assert all(VERSION_RE.match(v) for v in ids)
    assert len(set(ids)) == 200
    assert ids == sorted(ids)


def test_open_current_without_a_published_version(tmp_path: Path) -> None:
    assert open_current(tmp_path, "kb") is None
    assert read_current(tmp_path, "kb") is None
    with VersionWriter(tmp_path, "kb", EMB) as w:  # a writer in progress publishes nothing
        w.upsert([doc(1)])
        assert open_current(tmp_path, "kb") is None
        assert list_collections(tmp_path) == []


def test_read_current_refuses_garbage(tmp_path: Path) -> None:
    write(tmp_path, "kb", [doc(1)])
    (tmp_path / "kb" / "CURRENT").write_text("../../etc\n")
    with pytest.raises(ValueError, match="not a version id"):
        read_current(tmp_path, "kb")


def test_publish_points_current_at_an_older_version_and_back(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(1)])
    v2 = write(tmp_path, "kb", [doc(2)])
    publish(tmp_path, "kb", v1)
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert (coll.version, set(everything(coll))) == (v1, {"doc-1"})
    publish(tmp_path, "kb", v2)
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert (coll.version, set(everything(coll))) == (v2, {"doc-1", "doc-2"})
    assert list((tmp_path / "kb").glob(".CURRENT.*")) == []


def test_publish_refuses_an_incomplete_or_missing_version(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(1)])
    with pytest.raises(FileNotFoundError):
        publish(tmp_path, "kb", new_version_id())
    half = new_version_id()
    (tmp_path / "kb" / "versions" / half).mkdir()
    (tmp_path / "kb" / "versions" / half / "docs.sqlite").write_bytes(b"partial")
    with pytest.raises(FileNotFoundError):
        publish(tmp_path, "kb", half)
    assert read_current(tmp_path, "kb") == v1


def test_publish_refuses_a_version_id_that_readers_would_reject(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(1)])
    # A complete version directory under a name that is not a version id (a copy, a typo, ../..).
    shutil.copytree(version_path(tmp_path, "kb", v1), tmp_path / "kb" / "versions" / "my-copy")
    with pytest.raises(ValueError):
        publish(tmp_path, "kb", "my-copy")
    # Had it been published, every reader would fail on CURRENT from now on.
    assert read_current(tmp_path, "kb") == v1


def test_current_is_replaced_atomically_under_concurrent_readers(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(1)])
    v2 = write(tmp_path, "kb", [doc(2)])
    current = tmp_path / "kb" / "CURRENT"
    stop = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = current.read_text()
            except FileNotFoundError:
                bad.append("<missing>")
                continue
            (seen if text in (v1 + "\n", v2 + "\n") else bad).append(text)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            publish(tmp_path, "kb", v1 if i % 2 else v2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []
    assert len(seen) > 0
    assert read_current(tmp_path, "kb") == v1
    assert list((tmp_path / "kb").glob(".CURRENT.*")) == []


def test_list_collections_lists_only_published_ones(tmp_path: Path) -> None:
    assert list_collections(tmp_path / "missing") == []
    write(tmp_path, "beta", [doc(1)])
    write(tmp_path, "alpha", [doc(1)])
    w = VersionWriter(tmp_path, "gamma", EMB)  # being written, not yet published
    w.upsert([doc(1)])
    (tmp_path / "Not_Valid").mkdir()
    (tmp_path / "Not_Valid" / "CURRENT").write_text("x")
    (tmp_path / "delta").mkdir()  # empty directory
    (tmp_path / "stray-file").write_text("x")
    try:
        assert list_collections(tmp_path) == ["alpha", "beta"]
    finally:
        w.abort()
    assert list_collections(tmp_path) == ["alpha", "beta"]


# --- pruning ---------------------------------------------------------------------------------------


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_keeps_current_and_the_newest_versions(tmp_path: Path) -> None:
    versions = [write(tmp_path, "kb", [doc(i)]) for i in range(6)]
    vdir = tmp_path / "kb" / "versions"
    publish(tmp_path, "kb", versions[0])  # roll back to the oldest: it must survive
    removed = prune_versions(tmp_path, "kb", keep=2, grace_seconds=0)
    assert sorted(removed) == versions[1:4]
    assert sorted(p.name for p in vdir.iterdir()) == [versions[0], *versions[4:]]
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    assert coll.version == versions[0]
    # Nothing more to do.
    assert prune_versions(tmp_path, "kb", keep=2, grace_seconds=0) == []


def test_prune_honours_the_grace_period(tmp_path: Path) -> None:
    versions = [write(tmp_path, "kb", [doc(i)]) for i in range(5)]
    vdir = tmp_path / "kb" / "versions"
    assert prune_versions(tmp_path, "kb", keep=1, grace_seconds=3600) == []
    assert len(list(vdir.iterdir())) == 5
    age(vdir / versions[1], 7200)
    age(vdir / versions[2], 7200)
    age(vdir / versions[4], 7200)  # current and newest: kept however old
    assert sorted(prune_versions(tmp_path, "kb", keep=1, grace_seconds=3600)) == versions[1:3]
    assert sorted(p.name for p in vdir.iterdir()) == [versions[0], versions[3], versions[4]]


def test_prune_removes_stale_temporary_directories_and_current_files(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(1)])
    coll_dir = tmp_path / "kb"
    # A writer that died mid-way leaves its temporary directory (simulated: never closed).
    dead = VersionWriter(tmp_path, "kb", EMB)
    dead.upsert([doc(2)])
    dead.docs.close()
    dead._close_parents()
    stray = coll_dir / ".CURRENT.deadbeef"
    stray.write_text(v1 + "\n")
    assert prune_versions(tmp_path, "kb", grace_seconds=3600) == []
    assert dead.tmp.exists() and dead.segment_tmp.exists()
    assert stray.exists()
    age(dead.tmp, 7200)
    age(dead.segment_tmp, 7200)
    age(stray, 7200)
    assert sorted(prune_versions(tmp_path, "kb", grace_seconds=3600)) == sorted(
        [f".tmp/{dead.tmp.name}", f".tmp/{dead.segment_tmp.name}"]
    )
    assert not dead.tmp.exists() and not dead.segment_tmp.exists()
    assert not stray.exists()
    assert read_current(tmp_path, "kb") == v1
    assert open_current(tmp_path, "kb") is not None


def test_prune_of_an_unknown_collection_does_nothing(tmp_path: Path) -> None:
    assert prune_versions(tmp_path, "nothing-here", grace_seconds=0) == []


def test_readers_open_the_docstore_read_only(tmp_path: Path) -> None:
    v1 = write(tmp_path, "kb", [doc(i) for i in range(5)])
    coll = open_current(tmp_path, "kb")
    assert coll is not None
    with pytest.raises(sqlite3.OperationalError):
        coll.segments[0].docs.conn.execute("DELETE FROM docs")
    coll.search(vector=vec(1), query="document", k=3)
    coll.close()
    # Reading created nothing beside the files of the manifest, so the version still verifies.
    vdir = version_path(tmp_path, "kb", v1)
    assert Collection.open(vdir, verify=True).count == 5
    assert not list(coll.segments[0].path.glob("docs.sqlite-*"))
