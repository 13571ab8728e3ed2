"""Indexing end to end: real files of every type, the real embedder, the real retriever."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from omnirag.core.testing import serve_in_thread
from omnirag.index import open_current, read_current
from omnirag.indexer.lock import LockHeld
from omnirag.indexer.pipeline import run_kb
from omnirag.indexer.spec import parse


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
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha text\n")
    (docs / "b.pdf").write_bytes(b"%PDF-1.4 valid enough? no")
    kb = spec_for(docs)
    first = await run_kb(kb, settings)
    assert first.added == 1 and any(p["source"] == "b.pdf" for p in first.problems)


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
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    served = open_current(settings.index_root, "kb", verify=True)
    assert served is not None and served.version in {before, read_current(settings.index_root, "kb")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = open_current(settings.index_root, "kb", verify=True)
    assert final is not None and final.version != before
    assert final.search(query="paragraph 149 topic", k=1, mode="sparse")[0].metadata["source"] == "d149.md"


SITE_PAGES = {
    "/": "<html><head><title>Docs</title></head><body><main><h1>Docs home</h1><p>Start here.</p>"
    '<a href="/install">Install</a> <a href="/private/keys">Keys</a></main></body></html>',
    "/install": "<html><head><title>Install</title></head><body><main><h1>Install</h1>"
    "<p>Install the capybaractl tool with the package manager, then run it.</p></main></body></html>",
    "/private/keys": "<html><body><p>secret keys page</p></body></html>",
    "/robots.txt": "User-agent: *\nDisallow: /private/\n",
}


class _Site:
    """A tiny documentation site on 127.0.0.1 that answers conditional requests with 304."""

    def __init__(self) -> None:
        self.pages = dict(SITE_PAGES)

    def __enter__(self):
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        site = self
        site.hits: list[tuple[str, int]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = site.pages.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    site.hits.append((self.path, 404))
                    return
                etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    site.hits.append((self.path, 304))
                    return
                data = body.encode()
                self.send_response(200)
                ctype = "text/plain" if self.path.endswith(".txt") else "text/html; charset=utf-8"
                self.send_header("Content-Type", ctype)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                site.hits.append((self.path, 200))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


async def test_a_crawled_site_is_indexed_and_rerun_with_conditional_requests(tmp_path, settings):
    with _Site() as site:
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
