"""Documents through the gateway, on the whole stack for real: an upload into the example knowledge
base's collection survives the knowledge base's next run, is listed with its origin, and is deleted
by its owner through the ingest queue and the real indexer worker until search no longer finds it;
other keys get 403, knowledge-base documents 409, unknown ids 404."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from omnirag_harness.gateway_stack import EXAMPLE_KNOWLEDGE_BASES
from omnirag_harness.indexer import WorkerThread, index_knowledge_bases

from omnirag.index import open_current

KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
    "root": "root-key-0123456789abcdef",
    "ui": "ui-key-0123456789abcdef",
    "other": "other-key-0123456789abcdef",
}
API_KEYS = json.dumps(
    [
        {"name": "alice", "key": KEYS["alice"]},
        {"name": "bob", "key": KEYS["bob"]},
        {"name": "root", "key": KEYS["root"], "admin": True},
        {"name": "ui", "key": KEYS["ui"], "act_for_users": True},
        {"name": "other", "key": KEYS["other"], "collections": ["elsewhere"]},
    ]
)
PATIENCE = 120.0


def auth(name: str, user: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {KEYS[name]}"}
    if user is not None:
        headers["X-OmniRAG-User"] = user
    return headers


def wait_for(what: str, check: Callable[[], Any], alive: Callable[[], None] = lambda: None) -> Any:
    """Poll ``check`` until it returns something true (the worker and the retriever's reload are
    separate processes in production: there is no event to wait on but their visible result)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        result = check()
        if result:
            return result
        alive()
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(
    gateway_factory, redis_url, embedder_url, index_root: Path, uploads_dir: Path
) -> Iterator[tuple[str, WorkerThread]]:
    from omnirag.indexer.config import IndexerSettings

    indexer = IndexerSettings(
        index_root=index_root,
        embedder_url=embedder_url,
        redis_url=redis_url,
        uploads_dir=uploads_dir,
        prune_grace_seconds=0,
    )
    with (
        gateway_factory(api_keys=API_KEYS, default_rpm=0, default_tpm=0) as base,
        WorkerThread(indexer, uploads_dir) as worker,
    ):
        yield base, worker


def job_done(base: str, worker: WorkerThread, status_url: str, who: str) -> dict:
    def check() -> dict | None:
        st = httpx.get(base + status_url, headers=auth(who), timeout=30).json()
        return st if st["status"] in ("done", "dead") else None

    def alive() -> None:
        assert worker.thread.is_alive(), worker.error

    st = wait_for(f"job {status_url}", check, alive)
    assert st["status"] == "done", st
    return st


def listing(base: str, who: str, user: str | None = None, **params) -> httpx.Response:
    return httpx.get(
        f"{base}/v1/collections/docs/documents", headers=auth(who, user), params=params, timeout=30
    )


def all_documents(base: str, who: str, **params) -> list[dict]:
    out: list[dict] = []
    cursor = None
    while True:
        r = listing(base, who, limit=5, **params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            assert body["total"] == len(out)
            return out


def upload(base: str, who: str, source: str, text: str, user: str | None = None) -> dict:
    r = httpx.post(
        f"{base}/v1/collections/docs/documents",
        headers=auth(who, user),
        json={"text": text, "source": source, "title": f"Notes by {user or who}"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    return r.json()


def search_sources(retriever_url: str, query: str) -> list[str]:
    r = httpx.post(
        f"{retriever_url}/v1/collections/docs/search",
        json={"query": query, "k": 10, "mode": "sparse"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return [h["metadata"]["source"] for h in r.json()["hits"]]


def test_an_upload_survives_the_knowledge_base_run_and_its_owner_deletes_it(
    stack, retriever_url, index_root, embedder_url
):
    base, worker = stack
    sentence = "The pangolin review board meets on the first Monday of each quarter."
    queued = upload(base, "alice", "notes/pangolin.md", sentence)
    job_done(base, worker, queued["status_url"], "alice")

    mine = wait_for(
        "the upload in alice's listing", lambda: listing(base, "alice", mine="true").json()["data"]
    )
    (doc,) = mine
    assert doc["source"] == "notes/pangolin.md" and doc["title"] == "Notes by alice"
    assert doc["origin"]["kind"] == "upload" and doc["origin"]["principal"] == "alice"
    assert doc["origin"]["key"] == "alice" and doc["origin"]["job_id"] == queued["job_id"]
    assert doc["chunks"] >= 1 and doc["indexed_at"] > 0 and doc["deletable"] is True

    # The knowledge base's next run (make run's first step, the chart's CronJob) keeps it.
    index_knowledge_bases(EXAMPLE_KNOWLEDGE_BASES, index_root, embedder_url)
    served = open_current(index_root, "docs")
    assert served is not None and served.document(doc["id"]) is not None
    served.close()

    everything = all_documents(base, "bob")
    kinds = {d["origin"]["kind"] for d in everything}
    assert kinds == {"kb", "upload"}
    theirs = next(d for d in everything if d["id"] == doc["id"])
    assert theirs["deletable"] is False  # bob sees it, may not delete it
    assert listing(base, "bob", mine="true").json()["total"] == 0

    r = httpx.delete(f"{base}/v1/collections/docs/documents/{doc['id']}", headers=auth("bob"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "document_forbidden"

    r = httpx.delete(f"{base}/v1/collections/docs/documents/{doc['id']}", headers=auth("alice"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["status_url"] == f"/v1/ingest/{body['job_id']}"
    job_done(base, worker, body["status_url"], "alice")
    wait_for(
        "the upload gone from the listing", lambda: listing(base, "alice", mine="true").json()["total"] == 0
    )
    assert "notes/pangolin.md" not in search_sources(retriever_url, "pangolin review board")
    assert all(d["id"] != doc["id"] for d in all_documents(base, "alice"))


def test_knowledge_base_documents_are_not_deleted_through_the_api(stack):
    base, _ = stack
    kb_doc = next(d for d in all_documents(base, "root") if d["origin"]["kind"] == "kb")
    assert kb_doc["origin"]["kb"] == "docs" and kb_doc["deletable"] is False
    for who in ("alice", "root"):  # not even an admin: the next run would bring it back
        r = httpx.delete(f"{base}/v1/collections/docs/documents/{kb_doc['id']}", headers=auth(who))
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "document_from_knowledge_base" and "knowledge base 'docs'" in error["message"]


def test_unknown_documents_and_collections_a_key_may_not_read(stack):
    base, _ = stack
    for doc_id in ("0123456789abcdef", "not-a-document-id"):
        r = httpx.delete(f"{base}/v1/collections/docs/documents/{doc_id}", headers=auth("alice"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "document_not_found"
    r = listing(base, "other")
    assert r.status_code == 403 and r.json()["error"]["code"] == "collection_forbidden"
    r = httpx.delete(f"{base}/v1/collections/docs/documents/0123456789abcdef", headers=auth("other"))
    assert r.status_code == 403
    r = listing(base, "alice", cursor="garbage")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
    assert listing(base, "alice", limit=0).status_code == 422
    r = httpx.get(f"{base}/v1/collections/missing/documents", headers=auth("alice"))
    assert r.status_code == 404


def test_users_of_a_trusted_key_are_scoped_and_an_admin_may_delete_any_upload(stack, retriever_url):
    base, worker = stack
    queued = upload(base, "ui", "notes/okapi.md", "The okapi rota is pinned by the kitchen.", user="carol")
    job_done(base, worker, queued["status_url"], "ui")
    (doc,) = wait_for(
        "carol's upload listed", lambda: listing(base, "ui", user="carol", mine="true").json()["data"]
    )
    assert doc["origin"]["principal"] == "ui/carol" and doc["origin"]["key"] == "ui"
    assert listing(base, "ui", user="dave", mine="true").json()["total"] == 0
    r = httpx.delete(f"{base}/v1/collections/docs/documents/{doc['id']}", headers=auth("ui", "dave"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "document_forbidden"
    r = httpx.delete(f"{base}/v1/collections/docs/documents/{doc['id']}", headers=auth("root"))
    assert r.status_code == 202, r.text
    job_done(base, worker, r.json()["status_url"], "root")
    wait_for("the upload gone", lambda: listing(base, "ui", user="carol", mine="true").json()["total"] == 0)
    assert "notes/okapi.md" not in search_sources(retriever_url, "okapi rota kitchen")
