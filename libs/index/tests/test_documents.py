"""Documents of a collection: chunks grouped by document id, each with its origin, listed in pages
by SQL over the docstore, with the legacy rule for chunks written before origins were recorded."""

from __future__ import annotations

import base64

import pytest

from omnirag.index import Document, EmbeddingInfo, VersionWriter, open_current
from omnirag.index.docstore import decode_cursor, document_id, encode_cursor

DIM = 8
KB = "docs"


def chunk(doc_id: str, i: int, text: str, meta: dict) -> tuple[str, str, dict]:
    return f"{KB}:{doc_id}:{i:05d}", text, meta | {"chunk": i}


def corpus() -> list[tuple[str, str, dict]]:
    """Five documents: two of the knowledge base (one legacy), three uploads (one legacy), two of
    which share a source but belong to different principals."""
    guide = document_id("guide.md")
    alice = document_id("upload", "alice", "upload/notes.md")
    bob = document_id("upload", "bob", "upload/notes.md")
    kb = {"kb": KB, "origin": "kb", "origin_source": "local:../docs", "source": "guide.md", "title": "Guide"}

    def up(doc_id: str, key: str, principal: str, job: str, at: float, title: str = "Notes") -> dict:
        return {
            "kb": KB,
            "origin": "upload",
            "source": "upload/notes.md",
            "title": title,
            "doc_id": doc_id,
            "origin_key": key,
            "origin_principal": principal,
            "ingest_job": job,
            "indexed_at": at,
        }

    return [
        chunk(guide, 0, "Deploy guide part one", kb | {"doc_id": guide, "indexed_at": 100.0}),
        chunk(guide, 1, "Deploy guide part two", kb | {"doc_id": guide, "indexed_at": 100.0}),
        # Legacy: no origin, no doc_id, no indexed_at: the knowledge base's, id from the source.
        chunk(document_id("old.md"), 0, "An old page", {"kb": KB, "source": "old.md", "title": "Old"}),
        chunk(alice, 0, "Alice's notes one", up(alice, "alice", "alice", "job-alice-1", 200.0)),
        chunk(alice, 1, "Alice's notes two", up(alice, "alice", "alice", "job-alice-1", 201.5)),
        chunk(bob, 0, "Bob's notes", up(bob, "ui", "ui/bob", "job-bob-1", 300.0, title="Bob notes")),
        # Legacy upload: an ingest_job field and nothing else.
        chunk(
            document_id("upload/legacy.md"),
            0,
            "A legacy upload",
            {"kb": KB, "source": "upload/legacy.md", "title": "Legacy", "ingest_job": "job-legacy-1"},
        ),
    ]


@pytest.fixture
def collection(tmp_path, unit_vectors):
    rows = corpus()
    vectors = unit_vectors(len(rows), DIM, seed=3)
    with VersionWriter(tmp_path, KB, EmbeddingInfo(model="test/random", dimension=DIM)) as w:
        w.upsert(
            [
                Document(id=cid, text=text, metadata=meta, vector=v, content_hash=cid)
                for (cid, text, meta), v in zip(rows, vectors, strict=True)
            ]
        )
        w.commit()
    coll = open_current(tmp_path, KB)
    assert coll is not None
    yield coll
    coll.close()


def by_source_and_id(docs):
    return [(d.source, d.id) for d in docs]


def test_pages_cover_every_document_once_in_order(collection):
    seen = []
    cursor = None
    pages = 0
    while True:
        page = collection.documents(limit=2, cursor=cursor)
        assert page.total == 5
        assert len(page.documents) <= 2
        seen.extend(page.documents)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert len({d.id for d in seen}) == 5
    assert by_source_and_id(seen) == sorted(by_source_and_id(seen))
    assert [d.source for d in seen].count("upload/notes.md") == 2


def test_each_document_shows_its_origin_chunks_and_time(collection):
    docs = {(d.source, d.origin.get("principal")): d for d in collection.documents(limit=50).documents}
    guide = docs[("guide.md", None)]
    assert guide.id == document_id("guide.md")
    assert guide.title == "Guide" and guide.chunks == 2 and guide.indexed_at == 100.0
    assert guide.origin == {"kind": "kb", "kb": KB, "source": "local:../docs"}
    alice = docs[("upload/notes.md", "alice")]
    assert alice.chunks == 2 and alice.indexed_at == 201.5  # the latest write of its chunks
    assert alice.origin == {"kind": "upload", "key": "alice", "principal": "alice", "job_id": "job-alice-1"}
    bob = docs[("upload/notes.md", "ui/bob")]
    assert bob.id != alice.id and bob.origin["key"] == "ui"


def test_legacy_chunks_follow_the_rule(collection):
    """No origin: an ingest_job field makes an upload, anything else is the knowledge base's; the
    id is the hash of the source, the one its chunk ids already carry."""
    docs = {d.source: d for d in collection.documents(limit=50).documents}
    old = docs["old.md"]
    assert old.origin == {"kind": "kb", "kb": KB, "source": None}
    assert old.id == document_id("old.md") and old.indexed_at is None
    legacy = docs["upload/legacy.md"]
    assert legacy.origin == {"kind": "upload", "key": None, "principal": None, "job_id": "job-legacy-1"}
    assert collection.document(legacy.id) == legacy


def test_filters_by_origin_and_principal(collection):
    uploads = collection.documents(origin="upload")
    assert uploads.total == 3
    assert {d.origin["kind"] for d in uploads.documents} == {"upload"}
    kb = collection.documents(origin="kb")
    assert {d.source for d in kb.documents} == {"guide.md", "old.md"}
    mine = collection.documents(origin="upload", principal="ui/bob")
    assert mine.total == 1 and mine.documents[0].title == "Bob notes"
    assert collection.documents(principal="nobody").total == 0


def test_lookup_by_id(collection):
    alice = document_id("upload", "alice", "upload/notes.md")
    found = collection.document(alice)
    assert found is not None and found.origin["principal"] == "alice"
    assert collection.document("0" * 16) is None


def test_chunks_by_id_or_source_and_origin(collection):
    [store] = [s.docs for s in collection.segments]
    alice = document_id("upload", "alice", "upload/notes.md")
    assert sorted(store.document_chunks([alice])[alice]) == [f"{KB}:{alice}:00000", f"{KB}:{alice}:00001"]
    # A source names every document that has it; an origin narrows that down.
    assert len(store.document_chunks(["upload/notes.md"])) == 2
    assert store.document_chunks(["guide.md"], origin="upload") == {}
    assert list(store.document_chunks(["old.md"], origin="kb")) == [document_id("old.md")]


def test_page_size_is_bounded_and_cursors_are_checked(collection):
    assert len(collection.documents(limit=10_000).documents) == 5
    assert decode_cursor(encode_cursor("a/b.md", "0123456789abcdef")) == ("a/b.md", "0123456789abcdef")
    nested = base64.urlsafe_b64encode(b"[" * 3000).decode()
    for bad in ("not base64 !", encode_cursor("x", "y")[:-3] + "@@@", "W10", "x" * 5000, nested, "é"):
        with pytest.raises(ValueError):
            collection.documents(cursor=bad)
