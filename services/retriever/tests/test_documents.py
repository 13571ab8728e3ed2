"""The documents of a collection over HTTP: pages, origins, filters, one document by id, errors,
through plain HTTP and through the shared client (omnirag.core.clients.retriever)."""

from __future__ import annotations

import httpx
import pytest

from omnirag.core.clients.retriever import RetrieverClient
from omnirag.core.errors import InvalidInput, NotFound
from omnirag.core.schemas.retrieval import DocumentList, DocumentSummary
from omnirag.index import Document, EmbeddingInfo, IndexConfig, VersionWriter
from omnirag.index.docstore import document_id

MODEL = "all-MiniLM-L6-v2"
NAME = "team"


def chunks() -> list[tuple[str, str, dict]]:
    """(id, text, metadata): three knowledge-base documents (one legacy), three uploads."""
    rows = []
    for i, source in enumerate(["a/intro.md", "b/deploy.md"]):
        doc = document_id(source)
        for j in range(i + 1):
            rows.append(
                (
                    f"{NAME}:{doc}:{j:05d}",
                    f"Section {j} of {source}: the platform runs on Kubernetes.",
                    {
                        "source": source,
                        "title": source,
                        "kb": NAME,
                        "origin": "kb",
                        "origin_source": "local:./docs",
                        "doc_id": doc,
                        "indexed_at": 1000.0 + i,
                    },
                )
            )
    rows.append(
        (f"{NAME}:{document_id('c/legacy.md')}:00000", "An old page.", {"source": "c/legacy.md", "kb": NAME})
    )
    for principal, source in [("alice", "upload/x.md"), ("ui/bob", "upload/x.md"), ("alice", "upload/y.md")]:
        doc = document_id("upload", principal, source)
        meta = {
            "source": source,
            "title": source,
            "kb": NAME,
            "origin": "upload",
            "origin_key": principal.split("/")[0],
            "origin_principal": principal,
            "ingest_job": f"job-{doc}",
            "doc_id": doc,
            "indexed_at": 2000.0,
        }
        rows.append((f"{NAME}:{doc}:00000", f"{principal} uploaded {source}.", meta))
    return rows


@pytest.fixture
def team(index_root, embed_texts, retriever) -> str:
    rows = chunks()
    vectors = embed_texts([t for _, t, _ in rows])
    info = EmbeddingInfo(model=MODEL, dimension=384, languages=["en"])
    with VersionWriter(index_root, NAME, info, IndexConfig()) as w:
        w.upsert(
            [
                Document(id=i, text=t, metadata=m, vector=v, content_hash=i)
                for (i, t, m), v in zip(rows, vectors, strict=True)
            ]
        )
        w.commit()
    httpx.post(f"{retriever}/v1/admin/reload")
    return retriever


def listing(base: str, **params) -> httpx.Response:
    return httpx.get(f"{base}/v1/collections/{NAME}/documents", params=params, timeout=30)


def test_pages_of_documents_with_their_origins(team):
    seen: list[dict] = []
    cursor = None
    while True:
        r = listing(team, limit=2, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        page = DocumentList.model_validate(r.json())
        assert page.total == 6 and len(page.data) <= 2
        seen.extend(d.model_dump() for d in page.data)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 6 and len({d["id"] for d in seen}) == 6
    assert [d["source"] for d in seen] == sorted(d["source"] for d in seen)
    deploy = next(d for d in seen if d["source"] == "b/deploy.md")
    assert deploy["id"] == document_id("b/deploy.md") and deploy["chunks"] == 2
    assert deploy["indexed_at"] == 1001.0
    assert deploy["origin"] == {
        "kind": "kb",
        "kb": NAME,
        "source": "local:./docs",
        "key": None,
        "principal": None,
        "job_id": None,
    }
    legacy = next(d for d in seen if d["source"] == "c/legacy.md")
    assert legacy["origin"]["kind"] == "kb" and legacy["indexed_at"] is None and legacy["title"] is None


def test_filters_by_origin_and_principal(team):
    uploads = listing(team, origin="upload").json()
    assert uploads["total"] == 3 and {d["origin"]["kind"] for d in uploads["data"]} == {"upload"}
    bob = listing(team, origin="upload", principal="ui/bob").json()
    assert [(d["source"], d["origin"]["key"]) for d in bob["data"]] == [("upload/x.md", "ui")]
    assert listing(team, origin="kb").json()["total"] == 3


def test_one_document_by_id(team):
    doc_id = document_id("upload", "alice", "upload/y.md")
    r = httpx.get(f"{team}/v1/collections/{NAME}/documents/{doc_id}")
    assert r.status_code == 200, r.text
    doc = DocumentSummary.model_validate(r.json())
    assert doc.source == "upload/y.md" and doc.origin.principal == "alice" and doc.chunks == 1
    for bad in ("0" * 16, "not-an-id", "A" * 16):
        r = httpx.get(f"{team}/v1/collections/{NAME}/documents/{bad}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "document_not_found"


def test_errors(team):
    r = listing(team, cursor="bm90IGEgY3Vyc29y")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    for limit in (0, 201):
        assert listing(team, limit=limit).status_code == 422
    assert listing(team, origin="elsewhere").status_code == 422
    r = httpx.get(f"{team}/v1/collections/nope/documents")
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"


async def test_the_shared_client(team):
    client = RetrieverClient(team)
    page = client.list_documents(NAME, limit=4, origin="upload")
    assert page["total"] == 3 and page["next_cursor"] is None
    doc_id = page["data"][0]["id"]
    assert client.get_document(NAME, doc_id)["id"] == doc_id
    assert (await client.aget_document(NAME, doc_id))["id"] == doc_id
    assert (await client.alist_documents(NAME, principal="alice"))["total"] == 2
    with pytest.raises(NotFound) as missing:
        await client.aget_document(NAME, "f" * 16)
    assert missing.value.code == "document_not_found"
    with pytest.raises(NotFound) as no_collection:
        client.list_documents("nope")
    assert no_collection.value.code == "collection_not_found"
    with pytest.raises(InvalidInput) as bad:
        client.list_documents(NAME, cursor="garbage")
    assert bad.value.code == "invalid_cursor"
