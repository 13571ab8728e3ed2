"""Hot reload: new collections and versions appear without a restart, swaps fail no request, a bad
version never replaces a good one."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from omnirag_harness.servers import metric_value

from omnirag.index import Manifest
from omnirag.index.store import version_path


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def served_version(base: str, name: str = "docs") -> str | None:
    r = httpx.get(f"{base}/v1/collections/{name}")
    return r.json()["version"] if r.status_code == 200 else None


def test_new_collection_and_new_version_appear_without_restart(retriever, index_root, build):
    v2 = build(index_root, "faq", [("q1", "Refunds take five business days.", "faq.md", "en")])
    assert wait_for(lambda: served_version(retriever, "faq") == v2)
    hits = httpx.post(
        f"{retriever}/v1/collections/faq/search", json={"query": "refunds", "mode": "sparse"}
    ).json()
    assert hits["hits"][0]["id"] == "q1"

    v3 = build(
        index_root,
        "docs",
        [("new-doc", "Quarterly reports are due in April.", "fin.md", "en")],
        deletes=["vacation"],
    )
    # The admin endpoint reloads at once instead of at the next poll.
    changes = httpx.post(f"{retriever}/v1/admin/reload").json()
    assert served_version(retriever) == v3, changes
    r = httpx.post(
        f"{retriever}/v1/collections/docs/search", json={"query": "vacation days", "k": 10, "mode": "sparse"}
    ).json()
    assert "vacation" not in [h["id"] for h in r["hits"]]
    assert httpx.get(f"{retriever}/v1/collections/docs").json()["documents"] == 8  # 8 + 1 - 1


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(retriever, index_root, build):
    good = served_version(retriever)
    # Publish a version whose vectors file no longer matches its manifest (a bad copy, a bad disk).
    bad = build(index_root, "docs", [("x", "extra text", "x.md", "en")], base=None)
    # build() published it; undo the publish, corrupt the files, then publish it again.
    (index_root / "docs" / "CURRENT").write_text(good + "\n")
    [segment] = Manifest.model_validate_json(
        (version_path(index_root, "docs", bad) / "manifest.json").read_bytes()
    ).segments
    faiss_file = index_root / "docs" / "segments" / segment.id / "vectors.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[-1] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    from omnirag.index import publish

    publish(index_root, "docs", bad)
    httpx.post(f"{retriever}/v1/admin/reload")
    assert served_version(retriever) == good
    detail = httpx.get(f"{retriever}/v1/collections/docs").json()["detail"]
    assert bad in detail and "still serving" in detail
    text = httpx.get(f"{retriever}/metrics").text
    assert metric_value(text, "omnirag_retriever_reload_failures_total", 'collection="docs"') == 1
    r = httpx.get(f"{retriever}/readyz")
    # Still serving the good version: ready, with the failure reported.
    assert r.status_code == 200 and "failed to load" in r.json()["checks"]["index"]["detail"]
    ok = httpx.post(f"{retriever}/v1/collections/docs/search", json={"query": "helm", "mode": "sparse"})
    assert ok.status_code == 200


def test_removed_collection_disappears(retriever, index_root, build):
    import shutil

    build(index_root, "tmpkb", [("t", "temporary", "t.md", "en")])
    assert wait_for(lambda: served_version(retriever, "tmpkb") is not None)
    shutil.rmtree(index_root / "tmpkb")
    assert wait_for(lambda: served_version(retriever, "tmpkb") is None)
    assert httpx.post(f"{retriever}/v1/collections/tmpkb/search", json={"query": "x"}).status_code == 404


async def test_twenty_swaps_under_continuous_search_fail_no_request(retriever, index_root, build):
    stop = threading.Event()
    published: list[str] = []

    def publisher():
        for i in range(20):
            published.append(
                build(index_root, "docs", [(f"swap-{i}", f"swap number {i} happened", "s.md", "en")])
            )
            time.sleep(0.15)
        stop.set()

    seen: set[str] = set()
    failures: list[str] = []
    count = 0

    async def client(mode: str):
        nonlocal count
        async with httpx.AsyncClient(base_url=retriever, timeout=30) as c:
            while not stop.is_set():
                r = await c.post(
                    "/v1/collections/docs/search", json={"query": "gateway port", "k": 3, "mode": mode}
                )
                count += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen.add(r.json()["version"])

    thread = threading.Thread(target=publisher)
    thread.start()
    await asyncio.gather(*(client(m) for m in ("sparse", "sparse", "hybrid", "dense", "hybrid", "sparse")))
    thread.join()
    assert failures == []
    assert count > 50
    assert len(seen) >= 5  # the clients really saw versions change under them
    assert wait_for(lambda: served_version(retriever) == published[-1])


def test_a_one_document_reload_opens_only_its_new_segment(retriever, index_root, build):
    """Segments shared with the served version stay loaded: a reload after a one-document commit
    opens one small segment, whatever the collection's size (issue 17)."""
    build(index_root, "seg", [(f"s{i}", f"segment test document {i}", "s.md", "en") for i in range(30)])
    httpx.post(f"{retriever}/v1/admin/reload")

    def opened() -> float:
        text = httpx.get(f"{retriever}/metrics").text
        return metric_value(text, "omnirag_retriever_segments_opened_total", 'collection="seg"')

    before = opened()
    v2 = build(index_root, "seg", [("s3", "segment test document three, revised", "s.md", "en")])
    httpx.post(f"{retriever}/v1/admin/reload")
    assert served_version(retriever, "seg") == v2
    assert opened() == before + 1
    text = httpx.get(f"{retriever}/metrics").text
    assert metric_value(text, "omnirag_retriever_collection_segments", 'collection="seg"') == 2
    assert metric_value(text, "omnirag_retriever_collection_deleted_chunks", 'collection="seg"') == 1
    hits = httpx.post(
        f"{retriever}/v1/collections/seg/search", json={"query": "revised", "mode": "sparse"}
    ).json()["hits"]
    assert [h["id"] for h in hits] == ["s3"]
    assert httpx.get(f"{retriever}/v1/collections/seg").json()["documents"] == 30
