"""Indexing end to end: real files of every type, the real embedder, the real retriever."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from omnirag_harness.http_server import Site, send, serve_site
from omnirag_harness.servers import serve_in_thread

from omnirag.index import open_current, read_current
from omnirag.indexer.lock import LockHeld
from omnirag.indexer.pipeline import compact_collection, delete_documents, ingest, run_kb
from omnirag.indexer.spec import parse
from omnirag.indexer.types import SourceDocument


def make_files(root: Path) -> None:
    from docx import Document as Docx
    from fpdf import FPDF
    from PIL import Image, ImageDraw, ImageFont

    root.mkdir(parents=True, exist_ok=True)
    (root / "guide.md").write_text(
        "# Deploy guide\n\n## Ports\n\nThe zephyrgate service listens on port 8000.\n"
    )
    (root / "page.html").write_text(
        "<html><head><title>Holidays</title></head><body><nav>Home | About</nav><main><h1>Holidays</h1>"
        "<p>Employees receive quokkaleave: twenty-five days of paid vacation each year.</p>"
        "</main></body></html>"
    )
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 10, "Expense policy. Receipts for the marmotfund must be filed within thirty days.")
    pdf.output(str(root / "policy.pdf"))
    docx = Docx()
    docx.add_heading("Onboarding", level=1)
    docx.add_paragraph("Every new hire gets a narwhalpass badge on the first day.")
    docx.save(str(root / "onboarding.docx"))
    img = Image.new("RGB", (900, 160), "white")
    ImageDraw.Draw(img).text(
        (20, 40), "INVOICE TOTAL 4242 EUR", fill="black", font=ImageFont.load_default(size=56)
    )
    img.save(root / "invoice.png")
    (root / "zh.md").write_text("# 常见问题\n\n对话历史长期保存在 Redis 数据库里。\n", encoding="utf-8")


def spec_for(root: Path, name: str = "kb", **splitter):
    return parse(
        {
            "knowledgeBases": [
                {
                    "name": name,
                    "sources": [{"type": "local", "path": str(root)}],
                    "splitter": splitter or {"chunkSize": 400, "chunkOverlap": 50},
                }
            ]
        },
        root.parent,
    )[0]


@pytest.fixture
def retriever(settings, embedder_url):
    from omnirag.retriever.app import create_app
    from omnirag.retriever.config import RetrieverSettings

    settings.index_root.mkdir(parents=True, exist_ok=True)
    rs = RetrieverSettings(
        index_root=settings.index_root, embedder_url=embedder_url, poll_seconds=0.2, log_json=False
    )
    with serve_in_thread(create_app(rs), ready_path=None) as base:
        yield base


def top(base: str, query: str, name: str = "kb", **body) -> list[dict]:
    httpx.post(f"{base}/v1/admin/reload")
    r = httpx.post(f"{base}/v1/collections/{name}/search", json={"query": query, "k": 3, **body}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["hits"]


async def test_every_file_type_becomes_searchable_and_reruns_are_incremental(tmp_path, settings, retriever):
    docs = tmp_path / "docs"
    make_files(docs)
    kb = spec_for(docs)
    first = await run_kb(kb, settings)
    assert first.published and first.added == 6 and first.problems == []
    for query, source in [
        ("zephyrgate port", "guide.md"),
        ("quokkaleave vacation", "page.html"),
        ("marmotfund receipts", "policy.pdf"),
        ("narwhalpass badge", "onboarding.docx"),
        ("invoice total 4242", "invoice.png"),
        ("对话历史保存在哪里", "zh.md"),
    ]:
        hits = top(retriever, query)
        assert hits and hits[0]["metadata"]["source"] == source, (query, hits[:1])
        meta = hits[0]["metadata"]
        assert meta["kb"] == "kb" and meta["title"]
    guide = top(retriever, "zephyrgate port")[0]["metadata"]
    assert guide["title"] == "Deploy guide" and guide["section"] == "Deploy guide > Ports"

    again = await run_kb(kb, settings)
    assert not again.published and again.chunks_embedded == 0 and again.unchanged == 6
    assert again.version == first.version

    (docs / "guide.md").write_text(
        "# Deploy guide\n\n## Ports\n\nThe zephyrgate service now listens on 9000.\n"
    )
    (docs / "onboarding.docx").unlink()
    third = await run_kb(kb, settings)
    assert third.published and (third.changed, third.deleted, third.unchanged) == (1, 1, 4)
    assert third.chunks_embedded == 1
    assert "9000" in top(retriever, "zephyrgate port")[0]["text"]
    assert all(
        h["metadata"]["source"] != "onboarding.docx" for h in top(retriever, "narwhalpass badge", k=10)
    )


async def test_a_file_that_fails_to_load_keeps_its_old_chunks(tmp_path, settings):
    from fpdf import FPDF

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha text\n")
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 10, "Receipts for the marmotfund must be filed within thirty days.")
    pdf.output(str(docs / "b.pdf"))
    kb = spec_for(docs)
    first = await run_kb(kb, settings)
    assert first.added == 2 and not first.problems
    before = open_current(settings.index_root, "kb")
    assert before is not None
    pdf_chunks = before.document_chunks(["b.pdf"])
    assert (
        pdf_chunks and "marmotfund" in before.search(query="marmotfund receipts", k=1, mode="sparse")[0].text
    )

    (docs / "b.pdf").write_bytes(b"%PDF-1.4 valid enough? no")
    (docs / "a.md").write_text("# A\n\nalpha text, edited\n")
    second = await run_kb(kb, settings)
    assert any(p["source"] == "b.pdf" and p["kind"] == "error" for p in second.problems), second.problems
    assert second.published and (second.changed, second.deleted) == (1, 0)
    after = open_current(settings.index_root, "kb")
    assert after is not None and after.version != before.version
    # The broken file's document and its chunks are served as before.
    assert after.document_chunks(["b.pdf"]) == pdf_chunks
    hit = after.search(query="marmotfund receipts", k=1, mode="sparse")[0]
    assert hit.metadata["source"] == "b.pdf" and "marmotfund" in hit.text


async def test_two_concurrent_runs_one_fails_clearly_nothing_is_corrupted(tmp_path, settings):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i}.md").write_text(f"# Doc {i}\n\n" + f"content number {i} " * 40)
    kb = spec_for(docs)
    results = await asyncio.gather(run_kb(kb, settings), run_kb(kb, settings), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], LockHeld)
    assert "being indexed" in errors[0].message
    coll = open_current(settings.index_root, "kb")
    assert coll is not None and coll.count > 0


async def test_the_redis_lock_holds_across_processes_and_expires(tmp_path, settings, redis_url):
    from omnirag.indexer.lock import redis_lock

    async with redis_lock(redis_url, "kb", ttl=5, wait=0) as token:
        assert token
        with pytest.raises(LockHeld, match="being indexed by"):
            async with redis_lock(redis_url, "kb", ttl=5, wait=0.3):
                pass
    async with redis_lock(redis_url, "kb", ttl=5, wait=0):  # released: free again
        pass


def test_a_run_killed_midway_leaves_the_served_version_intact(tmp_path, settings, embedder_url):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "seed.md").write_text("# Seed\n\nthe first version\n")
    env = {
        "INDEXER_INDEX_ROOT": str(settings.index_root),
        "INDEXER_EMBEDDER_URL": embedder_url,
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    spec = tmp_path / "kb.yaml"
    spec.write_text(
        json.dumps({"knowledgeBases": [{"name": "kb", "sources": [{"type": "local", "path": "docs"}]}]})
    )
    cmd = [sys.executable, "-m", "omnirag.indexer", "run", "--config", str(spec)]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    before = read_current(settings.index_root, "kb")
    for i in range(150):
        (docs / f"d{i}.md").write_text(f"# Doc {i}\n\n" + f"paragraph {i} about topic {i % 7}. " * 60)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed once the new version is being built (its temporary directory exists) and long before
    # it can be published: 150 documents take seconds to embed.
    building = settings.index_root / "kb" / ".tmp"
    deadline = time.monotonic() + 120
    while not (building.is_dir() and any(building.iterdir())) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it started building a version"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    served = open_current(settings.index_root, "kb", verify=True)
    assert served is not None and served.version == before and served.count == 1
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = open_current(settings.index_root, "kb", verify=True)
    assert final is not None and final.version != before
    assert final.search(query="paragraph 149 topic", k=1, mode="sparse")[0].metadata["source"] == "d149.md"
    status = subprocess.run(
        [sys.executable, "-m", "omnirag.indexer", "status", "--json", "--config", str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    [row] = json.loads(status.stdout)
    assert (row["name"], row["declared"], row["version"], row["documents"]) == (
        "kb",
        True,
        final.version,
        final.count,
    )


SITE_PAGES = {
    "/": "<html><head><title>Docs</title></head><body><main><h1>Docs home</h1><p>Start here.</p>"
    '<a href="/install">Install</a> <a href="/private/keys">Keys</a></main></body></html>',
    "/install": "<html><head><title>Install</title></head><body><main><h1>Install</h1>"
    "<p>Install the capybaractl tool with the package manager, then run it.</p></main></body></html>",
    "/private/keys": "<html><body><p>secret keys page</p></body></html>",
    "/robots.txt": "User-agent: *\nDisallow: /private/\n",
}


class _Docs:
    """A tiny documentation site that answers conditional requests with 304; ``hits`` are the
    (path, status) it answered."""

    def __init__(self) -> None:
        self.pages = dict(SITE_PAGES)
        self.hits: list[tuple[str, int]] = []
        self.url = ""

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        body = self.pages.get(h.path)
        if body is None:
            send(h, 404)
            self.hits.append((h.path, 404))
            return
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
        if h.headers.get("If-None-Match") == etag:
            send(h, 304, headers={"ETag": etag})
            self.hits.append((h.path, 304))
            return
        kind = "text/plain" if h.path.endswith(".txt") else "text/html; charset=utf-8"
        send(h, 200, body, kind, {"ETag": etag})
        self.hits.append((h.path, 200))

    @contextmanager
    def served(self) -> Iterator[_Docs]:
        with serve_site(Site(fallback=self.answer)) as site:
            self.url = site.base + "/"
            yield self


async def test_a_crawled_site_is_indexed_and_rerun_with_conditional_requests(tmp_path, settings):
    with _Docs().served() as site:
        spec = {
            "knowledgeBases": [
                {
                    "name": "web",
                    "sources": [
                        {
                            "type": "web",
                            "urls": [site.url],
                            "maxDepth": 2,
                            "allowHosts": ["127.0.0.1"],
                            "delaySeconds": 0,
                        }
                    ],
                }
            ]
        }
        kb = parse(spec, tmp_path)[0]
        first = await run_kb(kb, settings)
        assert first.published and first.added == 2
        coll = open_current(settings.index_root, "web")
        assert (
            coll.search(query="capybaractl install", k=1, mode="sparse")[0].metadata["source"]
            == site.url + "install"
        )
        assert all(
            "/private/" not in h.metadata["source"]
            for h in coll.search(query="secret keys", k=5, mode="sparse")
        )
        site.hits.clear()
        again = await run_kb(kb, settings)
        assert not again.published and again.chunks_embedded == 0 and again.deleted == 0
        assert ("/install", 304) in site.hits and ("/install", 200) not in site.hits

        site.pages["/install"] = site.pages["/install"].replace("package manager", "installer script")
        third = await run_kb(kb, settings)
        assert third.published and third.changed == 1
        # The same crawl with the default policy fetches nothing: loopback is refused.
        default = parse(
            {"knowledgeBases": [{"name": "web2", "sources": [{"type": "web", "urls": [site.url]}]}]}, tmp_path
        )[0]
        site.hits.clear()
        refused = await run_kb(default, settings)
        assert refused.refused and site.hits == [] and not refused.published


# --- origins: a knowledge-base run manages only its own documents --------------------------------


def upload(source: str, text: str, job: str = "job-00000001") -> SourceDocument:
    # What the ingest worker hands to the pipeline for an upload.
    return SourceDocument(
        source=source, title=source, text=text, metadata={"content_type": "text/plain", "ingest_job": job}
    )


def documents(settings, name: str = "kb") -> dict[tuple[str, str | None], dict]:
    coll = open_current(settings.index_root, name)
    assert coll is not None
    try:
        page = coll.documents(limit=500)
        assert page.next_cursor is None
        return {(d.source, d.origin.get("principal")): d.as_dict() for d in page.documents}
    finally:
        coll.close()


def sparse_sources(settings, query: str, name: str = "kb") -> list[str]:
    coll = open_current(settings.index_root, name)
    assert coll is not None
    try:
        return [h.metadata["source"] for h in coll.search(query=query, k=10, mode="sparse")]
    finally:
        coll.close()


def kb_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "guide.md").write_text("# Guide\n\nThe zephyrgate service listens on port 8000.\n")
    (root / "faq.md").write_text("# FAQ\n\nQuokka questions are answered on Tuesdays.\n")


async def test_a_knowledge_base_run_keeps_uploads(tmp_path, settings):
    """The data-loss bug: an upload into a knowledge base's collection was deleted by its next run."""
    docs = tmp_path / "docs"
    kb_files(docs)
    kb = spec_for(docs)
    await run_kb(kb, settings)
    await ingest("kb", [upload("upload/notes.md", "The wombat budget is due on Friday.")], settings)
    (docs / "faq.md").unlink()  # the run still deletes what left its own sources
    summary = await run_kb(kb, settings)
    assert summary.deleted == 1
    assert "upload/notes.md" in sparse_sources(settings, "wombat budget")
    assert "faq.md" not in sparse_sources(settings, "quokka questions")
    listed = documents(settings)
    assert {source for source, _ in listed} == {"guide.md", "upload/notes.md"}


async def test_every_document_records_its_origin(tmp_path, settings):
    docs = tmp_path / "docs"
    kb_files(docs)
    kb = spec_for(docs)
    before = time.time()
    await run_kb(kb, settings)
    await ingest(
        "kb",
        [upload("upload/notes.md", "The wombat budget is due on Friday.", job="job-abcdef12")],
        settings,
        key="ui",
        principal="ui/alice",
    )
    listed = documents(settings)
    guide = listed[("guide.md", None)]
    assert guide["origin"] == {"kind": "kb", "kb": "kb", "source": f"local:{docs}"}
    assert guide["indexed_at"] >= before and guide["chunks"] == 1
    note = listed[("upload/notes.md", "ui/alice")]
    assert note["origin"] == {
        "kind": "upload",
        "key": "ui",
        "principal": "ui/alice",
        "job_id": "job-abcdef12",
    }
    # Flat fields, so a search filter selects by origin.
    coll = open_current(settings.index_root, "kb")
    hits = coll.search(query="budget zephyrgate", k=5, mode="sparse", filter={"origin": "upload"})
    assert [h.metadata["source"] for h in hits] == ["upload/notes.md"]
    assert hits[0].metadata["origin_principal"] == "ui/alice" and hits[0].metadata["origin_key"] == "ui"
    coll.close()


async def test_uploads_live_in_their_own_id_space_per_principal(tmp_path, settings):
    """Same source, different owners: nobody replaces anybody else's document. The knowledge base
    and an upload of its source both stay; two principals' uploads of one source both stay; an
    upload replaces only its own principal's upload of that source."""
    docs = tmp_path / "docs"
    kb_files(docs)
    kb = spec_for(docs)
    await run_kb(kb, settings)
    await ingest(
        "kb", [upload("guide.md", "An uploaded guide about narwhal ports.")], settings, principal="alice"
    )
    await ingest("kb", [upload("upload/n.md", "Alice writes about lemurs.")], settings, principal="alice")
    await ingest("kb", [upload("upload/n.md", "Bob writes about lemurs too.")], settings, principal="bob")
    again = await run_kb(kb, settings)
    assert not again.published and again.problems == []  # the upload of guide.md is not the KB's
    assert "guide.md" in sparse_sources(settings, "zephyrgate")  # the KB's guide, untouched
    assert "guide.md" in sparse_sources(settings, "narwhal")  # and alice's upload beside it
    replaced = await ingest(
        "kb", [upload("upload/n.md", "Alice now writes about tapirs.")], settings, principal="alice"
    )
    assert replaced.changed == 1 and replaced.added == 0
    listed = documents(settings)
    assert set(listed) == {
        ("faq.md", None),
        ("guide.md", None),
        ("guide.md", "alice"),
        ("upload/n.md", "alice"),
        ("upload/n.md", "bob"),
    }
    texts = " ".join(
        h.text
        for h in open_current(settings.index_root, "kb").search(query="writes about", k=10, mode="sparse")
    )
    assert "tapirs" in texts and "Bob writes" in texts and "Alice writes about lemurs" not in texts


async def test_delete_documents_by_id_or_source_under_the_lock(tmp_path, settings):
    docs = tmp_path / "docs"
    kb_files(docs)
    await run_kb(spec_for(docs), settings)
    await ingest("kb", [upload("upload/a.md", "Aardvark notes.")], settings, principal="alice")
    await ingest("kb", [upload("upload/b.md", "Badger notes.")], settings, principal="alice")
    listed = documents(settings)
    a_id = listed[("upload/a.md", "alice")]["id"]
    guide_id = listed[("guide.md", None)]["id"]
    # The worker deletes uploads only: a knowledge-base document's id deletes nothing.
    nothing = await delete_documents("kb", [guide_id], settings, origin="upload")
    assert nothing.deleted == 0 and not nothing.published
    gone = await delete_documents("kb", [a_id], settings, origin="upload")
    assert gone.deleted == 1 and gone.published
    by_source = await delete_documents("kb", ["upload/b.md"], settings)
    assert by_source.deleted == 1
    assert set(documents(settings)) == {("guide.md", None), ("faq.md", None)}
    assert sparse_sources(settings, "aardvark badger") == []
    again = await delete_documents("kb", [a_id], settings)  # deleting twice is harmless
    assert again.deleted == 0 and not again.published


def make_legacy(settings, name: str = "kb") -> None:
    """Rewrite the current version as the indexer wrote it before origins were recorded: no origin
    fields, no doc_id, no indexed_at, and every chunk id derived from the source alone."""
    from omnirag.index import Document, EmbeddingInfo, IndexConfig, VersionWriter
    from omnirag.index.ids import int_id
    from omnirag.indexer.pipeline import sha256

    coll = open_current(settings.index_root, name)
    manifest = coll.manifest
    chunks = coll.chunks()
    ids, vecs = coll.vectors_for([int_id(c) for c in chunks])
    vector_of = dict(zip(ids.tolist(), vecs, strict=True))
    coll.close()
    embedding = EmbeddingInfo.model_validate(manifest.embedding.model_dump())
    config = IndexConfig.model_validate(manifest.index.model_dump())
    with VersionWriter(settings.index_root, name, embedding, config) as w:
        hashes = w.hashes()
        w.abort()
    legacy = []
    for cid, (text, meta) in chunks.items():
        for key in ("origin", "origin_source", "origin_key", "origin_principal", "doc_id", "indexed_at"):
            meta.pop(key, None)
        legacy_id = f"{name}:{sha256(meta['source'])[:16]}:{int(meta['chunk']):05d}"
        legacy.append(Document(legacy_id, text, meta, vector_of[int_id(cid)], hashes[cid]))
    with VersionWriter(settings.index_root, name, embedding, config, base=None) as w:
        w.upsert(legacy)
        w.commit()


async def test_a_legacy_index_without_origins(tmp_path, settings):
    """Chunks with an ingest_job field are uploads, the rest the knowledge base's: the next run
    keeps the upload, deletes only its own documents gone from its sources, and records the
    origin of the ones it keeps without embedding them again."""
    docs = tmp_path / "docs"
    kb_files(docs)
    kb = spec_for(docs)
    await run_kb(kb, settings)
    await ingest("kb", [upload("upload/old-notes.md", "Legacy wombat notes.")], settings)
    make_legacy(settings)
    listed = documents(settings)
    assert listed[("upload/old-notes.md", None)]["origin"]["kind"] == "upload"
    assert listed[("guide.md", None)]["origin"] == {"kind": "kb", "kb": "kb", "source": None}

    (docs / "faq.md").unlink()
    summary = await run_kb(kb, settings)
    assert summary.published and summary.deleted == 1 and summary.chunks_embedded == 0
    listed = documents(settings)
    assert set(listed) == {("guide.md", None), ("upload/old-notes.md", None)}
    assert listed[("guide.md", None)]["origin"]["source"] == f"local:{docs}"  # recorded now
    assert "upload/old-notes.md" in sparse_sources(settings, "wombat")


async def test_a_legacy_upload_holding_a_knowledge_base_source_is_kept_and_reported(tmp_path, settings):
    """Before origins, an upload and the knowledge base shared one id space: the run finds the old
    upload where its own document would go, keeps the upload and says so."""
    docs = tmp_path / "docs"
    kb_files(docs)
    kb = spec_for(docs)
    await run_kb(kb, settings)
    await delete_documents("kb", ["guide.md"], settings)
    await ingest("kb", [upload("guide.md", "An uploaded guide about narwhals.")], settings)
    make_legacy(settings)
    summary = await run_kb(kb, settings)
    assert [p["source"] for p in summary.problems if p["kind"] == "conflict"] == ["guide.md"]
    assert "delete it through the API" in summary.problems[0]["reason"]
    assert "guide.md" in sparse_sources(settings, "narwhals")
    assert sparse_sources(settings, "zephyrgate") == []


# --- deleting a whole collection ------------------------------------------------------------------


def test_the_delete_command_removes_a_collection_under_its_lock(tmp_path, settings, monkeypatch, capsys):
    import fcntl
    import os

    from omnirag.index import list_collections
    from omnirag.indexer.cli import main

    docs = tmp_path / "docs"
    kb_files(docs)
    asyncio.run(run_kb(spec_for(docs), settings))
    asyncio.run(run_kb(spec_for(docs, name="kb-two"), settings))
    spec = tmp_path / "kb.yaml"
    spec.write_text(
        json.dumps({"knowledgeBases": [{"name": "kb", "sources": [{"type": "local", "path": "docs"}]}]})
    )
    for var, value in {
        "INDEXER_INDEX_ROOT": str(settings.index_root),
        "INDEXER_REDIS_URL": "",
        "INDEXER_CONFIG": str(spec),
        "INDEXER_LOCK_WAIT_SECONDS": "0",
    }.items():
        monkeypatch.setenv(var, value)

    assert main(["delete", "--collection", "kb"]) == 2  # the whole collection needs --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["delete", "--collection", "../etc", "--yes"]) == 2

    # A run holding the lock: the delete refuses and leaves everything as it was.
    fd = os.open(settings.index_root / ".kb.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["delete", "--collection", "kb", "--yes"]) == 2
        assert "being indexed" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert list_collections(settings.index_root) == ["kb", "kb-two"]

    assert main(["delete", "--collection", "kb", "--yes"]) == 0
    out = capsys.readouterr()
    assert "kb: deleted" in out.out and "still declares" in out.err  # warned: the next run rebuilds it
    assert list_collections(settings.index_root) == ["kb-two"]
    assert not (settings.index_root / "kb").exists()
    assert [p.name for p in settings.index_root.iterdir() if p.name.startswith(".deleted")] == []
    assert main(["delete", "--collection", "kb", "--yes"]) == 1  # nothing left to delete
    assert main(["delete", "--collection", "kb-two", "--document", "faq.md"]) == 0
    assert set(documents(settings, "kb-two")) == {("guide.md", None)}


async def test_uploads_leave_segments_that_compaction_merges(tmp_path, settings):
    """Each upload is a small segment of its own (nothing else rewritten); after a publish the
    tiered policy merges a full tier; `compact --full` merges the rest; every document stays
    searchable through all of it (issue 17)."""
    tight = settings.model_copy(update={"compaction_fanout": 3, "compaction_min_segment": 100})
    words = ["wombat", "narwhal", "axolotl", "pangolin", "quokka"]
    merged = []
    for i, word in enumerate(words):
        summary = await ingest("kb", [upload(f"u{i}.md", f"Notes about the {word}.")], tight)
        assert summary.published and summary.compaction is None  # the worker compacts, in the background
        result = await compact_collection(tight, "kb")  # what the worker runs after the publish
        assert result is not None
        merged.append(result["merged"])
    # Three segments make a full tier: merged after the third publish and after the fifth.
    assert merged == [0, 0, 3, 0, 3], merged
    coll = open_current(settings.index_root, "kb", verify=True)
    assert coll is not None and len(coll.segments) == 1
    for word in words:
        assert sparse_sources(settings, word) == [f"u{words.index(word)}.md"]
    # Compaction off: each upload only adds its segment.
    off = settings.model_copy(update={"compaction": False})
    for i in range(2):
        await ingest("kb", [upload(f"v{i}.md", f"More notes, part {i}, about okapis.")], off)
        assert await compact_collection(off, "kb") is None
    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "omnirag.indexer", "status", "--json"],
        env=os.environ | {"INDEXER_INDEX_ROOT": str(settings.index_root)},
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = [r for r in json.loads(status.stdout) if r["name"] == "kb"]
    assert (row["segments"], row["documents"], row["format"]) == (3, 7, 2)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "omnirag.indexer", "compact", "--collection", "kb", "--full"],
        env=os.environ | {"INDEXER_INDEX_ROOT": str(settings.index_root), "INDEXER_REDIS_URL": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "3 segment(s) merged into one of 7 chunks" in done.stdout, done.stdout
    coll = open_current(settings.index_root, "kb", verify=True)
    assert coll is not None and len(coll.segments) == 1 and coll.count == 7
    assert sorted(sparse_sources(settings, "okapis")) == ["v0.md", "v1.md"]
