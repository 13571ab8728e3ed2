"""The rendered release, run as containers (issue 13): every check goes through the pods the chart
renders, started by podman from the built images; conftest.py says what the harness changes in the
render and why. Tests run in file order: the index the first-run Job's pod builds is what the chat
cites."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from omnirag_harness.servers import metric_value

# conftest.py skips this module unless OMNIRAG_TEST_RELEASE=1 (set by `make test`).
pytestmark = pytest.mark.timeout(1800)  # the first test waits for the whole release to start
FULLNAME = "rel-omnirag"  # helm template's release "rel": the Service and pod names
AUTH = {"Authorization": "Bearer release-test-key-" + "0" * 16}  # conftest.API_KEY
CHROMIUM = os.environ.get("OMNIRAG_TEST_CHROMIUM", "/usr/bin/chromium")
# Debian's chromium, never a browser a test tool downloads (CI has no route to one).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVICES = ["embedder", "retriever", "gateway", "ui", "indexer-worker"]


def wait_for(what: str, check: Any, timeout: float) -> Any:
    """Poll ``check()`` until it returns something truthy (the event), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {last!r})")


@pytest.mark.parametrize("component", SERVICES)
def test_pod_runs_as_rendered(release: Any, component: str) -> None:
    """uid 10001, read-only root, no capabilities, as the chart renders it; and it is ready (the
    fixture ran its rendered readiness probe until it passed; run once more here)."""
    name = f"{FULLNAME}-{component}"
    rendered = release.workloads[name].rendered_spec["containers"]
    containers = release.containers(name)
    assert len(containers) == len(rendered)
    for c in containers:
        assert c["State"]["Status"] == "running", release.logs(name)
        assert c["Config"]["User"].split(":")[0] == "10001"
        assert c["HostConfig"]["ReadonlyRootfs"] is True
        assert c["HostConfig"]["CapAdd"] in (None, [])
        assert "no-new-privileges" in " ".join(c["HostConfig"].get("SecurityOpt") or [])
        # What the process really holds: uid 10001 and no capability at all, bounding set included.
        status = release.exec(c["Id"], "python", "-c", "print(open('/proc/1/status').read())")
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split() == ["10001"] * 4
        assert fields["Gid"].split() == ["10001"] * 4
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == 0, (cap, fields[cap])
        assert fields["NoNewPrivs"].strip() == "1"
    ok, detail = release.ready(name)
    assert ok, detail


def started_at(container: dict[str, Any], key: str = "StartedAt") -> datetime:
    """A podman timestamp (nanoseconds, which datetime does not take) as a datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", container["State"][key]))


def test_model_download_pod_fills_the_models_volume_and_gates_the_embedder(release: Any) -> None:
    """The model-download Job, run as a pod, fetches the model from the Hub-protocol test server into
    the models volume and writes its marker last; the embedder pod, gated on that marker by its
    init container, waited while nothing was downloaded and serves the downloaded model after."""
    model, marker_name = "minilm-downloaded", ".omnirag-download.json"  # conftest.DOWNLOAD_MODEL, MARKER
    gated = release.gated
    # Before the download: the init container ran and waited, the embedder had not started.
    assert gated["init"] and all(state == "running" for _, state in gated["init"]), gated
    assert f"/models/{model}/{marker_name}" in gated["init_log"], gated
    assert gated["main"] and all(state != "running" for _, state, _ in gated["main"]), gated
    assert all(started.startswith("0001-01-01") for _, _, started in gated["main"]), gated
    assert gated["marker_existed"] is False
    assert gated["hub_file_gets"] == 0

    # The Job's pod ran to completion and wrote every file, then the marker, into the volume.
    download = f"{FULLNAME}-model-download"
    (job,) = release.containers(download)
    assert job["State"]["ExitCode"] == 0, release.logs(download)
    hub = release.hub
    directory = release.volume_path(f"{FULLNAME}-models") / model
    marker = json.loads((directory / marker_name).read_text())
    assert marker["repo"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert marker["resolved_revision"] == hub.repo.head
    assert {f["path"] for f in marker["files"]} == set(hub.files)
    for path, data in hub.files.items():
        assert (directory / path).read_bytes() == data, path
    # Really fetched from the hub by the pod: the weights came through the LFS redirect.
    assert hub.hub.file_gets("model.safetensors"), [s.path for s in hub.hub.requests()]

    # The gate opened only after the marker: the init container finished, then the embedder started.
    embedder = f"{FULLNAME}-embedder"
    # podman removes an init container once it has run (so it cannot be inspected afterwards).
    (main,) = release.containers(embedder)
    assert main["State"]["Status"] == "running"
    assert started_at(main) >= started_at(job, "FinishedAt")

    # It serves the downloaded model from the volume.
    info = httpx.get(release.url(embedder) + "/v1/info", timeout=10).json()
    assert info["model"] == model, info
    assert info["dimension"] == 384, info
    r = httpx.post(release.url(embedder) + "/v1/embeddings", json={"input": "hello"}, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384


def served_collection(release: Any, name: str) -> dict[str, Any] | None:
    retriever = release.url(f"{FULLNAME}-retriever")
    body = httpx.get(retriever + "/v1/collections", timeout=10).json()
    items = body.get("collections", body) if isinstance(body, dict) else body
    for c in items:
        if (c.get("name") if isinstance(c, dict) else c) == name:
            return c if isinstance(c, dict) else {"name": c}
    return None


def run_summary(log: str) -> dict[str, int]:
    """The counts an indexer run prints at its end (``omnirag.indexer.cli.render``)."""
    docs = re.search(r"documents: (\d+) added, (\d+) changed, (\d+) deleted, (\d+) unchanged", log)
    chunks = re.search(r"chunks: (\d+) embedded, (\d+) in the collection", log)
    assert docs and chunks, log
    added, changed, deleted, unchanged = map(int, docs.groups())
    embedded, total = map(int, chunks.groups())
    return {
        "added": added,
        "changed": changed,
        "deleted": deleted,
        "unchanged": unchanged,
        "embedded": embedded,
        "total": total,
    }


def test_first_run_job_indexes_the_knowledge_base_right_after_install(release: Any) -> None:
    """The knowledge base's first-run Job (``indexer.initialRun``), started with the install beside
    the Deployments, waited for the embedder (itself waiting for its model's download), indexed the
    example knowledge base into the index volume, and the retriever pod (index volume read-only)
    picked the new collection up without a restart."""
    name = f"{FULLNAME}-index-docs-init"
    code = release.wait_exit(name, timeout=900)
    assert code == 0, release.logs(name)
    release.timings["install_to_first_index_s"] = time.monotonic() - release.timings["install_started"]
    summary = run_summary(release.logs(name))
    assert summary["added"] > 0 and summary["embedded"] > 0, summary
    assert summary["total"] >= summary["embedded"], summary
    collection = wait_for("the retriever serves docs", lambda: served_collection(release, "docs"), 120)
    assert collection["name"] == "docs"


def test_cronjob_pod_runs_incrementally_over_the_first_index(release: Any) -> None:
    """The knowledge base's CronJob, run once as a pod (the next scheduled run), finds every
    document unchanged and embeds nothing: the same index volume, the same knowledge base."""
    name = f"{FULLNAME}-index-docs"
    started = time.monotonic()
    release.play(name)
    code = release.wait_exit(name, timeout=900)
    assert code == 0, release.logs(name)
    release.timings["scheduled_rerun_s"] = time.monotonic() - started
    summary = run_summary(release.logs(name))
    assert summary["embedded"] == 0, summary
    assert summary["added"] == summary["changed"] == summary["deleted"] == 0, summary
    assert summary["unchanged"] > 0, summary
    assert served_collection(release, "docs") is not None


def test_streamed_chat_through_the_gateway_cites_the_index(release: Any) -> None:
    gateway = release.url(f"{FULLNAME}-gateway")
    body = {
        "model": "smollm2",
        "stream": True,
        "messages": [{"role": "user", "content": "Which port does the gateway listen on?"}],
        "collection": "docs",
        "max_tokens": 48,
        "temperature": 0,
    }
    content = ""
    omnirag: dict[str, Any] | None = None
    done = False
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, headers=AUTH, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices", []):
                content += (choice.get("delta") or {}).get("content") or ""
            omnirag = chunk.get("omnirag", omnirag)
    assert done
    assert content.strip()
    assert omnirag is not None
    assert omnirag["citations"], omnirag
    assert all(c["source"] for c in omnirag["citations"])
    assert "retriever" not in omnirag.get("degraded", [])


def test_the_gateway_pod_serves_both_models_of_the_list(release: Any) -> None:
    """The chart's models list reaches the gateway pod as its models file: /v1/models lists both
    entries with their capabilities and the default, and a request's ``model`` picks one, named
    in the answer; an unknown model is OpenAI's 404."""
    gateway = release.url(f"{FULLNAME}-gateway")
    listed = httpx.get(gateway + "/v1/models", headers=AUTH, timeout=10).json()["data"]
    chat = {m["id"]: m["omnirag"] for m in listed if "embeddings" not in m["omnirag"]["capabilities"]}
    assert chat == {
        "smollm2": {"capabilities": ["text"], "default": True},
        "smollm2-omni": {"capabilities": ["text", "vision", "audio", "video"], "default": False},
    }, listed
    body = {
        "model": "smollm2-omni",
        "messages": [{"role": "user", "content": "Say hello."}],
        "rag": False,
        "max_tokens": 8,
        "temperature": 0,
    }
    r = httpx.post(gateway + "/v1/chat/completions", json=body, headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "smollm2-omni"
    r = httpx.post(
        gateway + "/v1/chat/completions", json={**body, "model": "no-such-model"}, headers=AUTH, timeout=30
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"


def test_chromium_gets_an_answer_through_the_ui_pod(release: Any) -> None:
    """A real Chromium logs in to the UI pod, asks, and gets an answer with its sources: browser →
    UI pod → gateway pod (by its Service name) → retriever and LLM."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US").new_page()
            page.goto(release.url(f"{FULLNAME}-ui") + "/")
            page.fill("input[name=password]", release.ui_password)
            page.click("button[type=submit]")
            # Loaded: the conversations were read from the browser and the gateway asked for history.
            page.wait_for_selector("#conversations input:checked", timeout=60_000)
            page.fill("#chat-input textarea", "Which port does the gateway listen on?")
            page.keyboard.press("Enter")
            done = "#chatbot .omnirag-meta, #chatbot .omnirag-error"
            page.wait_for_selector(done, timeout=180_000)
            answer = page.locator('#chatbot [data-testid="bot"]').last
            assert answer.locator(".omnirag-error").count() == 0, answer.inner_text()
            assert answer.locator(".omnirag-source").count() >= 1, answer.inner_text()
        finally:
            browser.close()


def test_upload_through_the_gateway_is_indexed_by_the_worker_pod(release: Any) -> None:
    gateway = release.url(f"{FULLNAME}-gateway")
    marker = "zorblax-" + release.run_id
    r = httpx.post(
        gateway + "/v1/collections/release-uploads/documents",
        json={"text": f"The {marker} reactor runs on seventeen quartz crystals.", "source": "note.txt"},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]

    def finished() -> dict[str, Any] | None:
        status = httpx.get(f"{gateway}/v1/ingest/{job}", headers=AUTH, timeout=10).json()
        assert status["status"] not in ("failed", "dead"), status
        return status if status["status"] == "done" else None

    wait_for("the worker pod indexes the upload", finished, 300)
    retriever = release.url(f"{FULLNAME}-retriever")

    def found() -> list[dict[str, Any]] | None:
        r = httpx.post(
            retriever + "/v1/collections/release-uploads/search",
            json={"query": f"{marker} reactor", "k": 3, "mode": "sparse"},
            timeout=30,
        )
        if r.status_code != 200:
            return None
        hits = [h for h in r.json()["hits"] if marker in h["text"]]
        return hits or None

    wait_for("the retriever finds the upload", found, 120)

    # The worker pod's /metrics (what the chart's ServiceMonitor scrapes) counted the job and its commit.
    worker = httpx.get(f"http://{release.ip(f'{FULLNAME}-indexer-worker')}:8003/metrics", timeout=10).text
    assert metric_value(worker, "omnirag_indexer_jobs_total", 'kind="text",outcome="done"') >= 1, worker
    commits = metric_value(worker, "omnirag_indexer_commit_seconds_count", 'collection="release-uploads"')
    assert commits >= 1, worker
    assert metric_value(worker, "omnirag_indexer_redis_up") == 1


def test_ui_serves_its_page_after_login(release: Any) -> None:
    """The UI pod sends a browser to its login, takes the local password, then serves Gradio's page."""
    ui = release.url(f"{FULLNAME}-ui")
    with httpx.Client(base_url=ui, timeout=30) as client:
        r = client.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 302
        assert r.headers["location"].startswith("/auth/login")
        r = client.post("/auth/local", data={"password": release.ui_password, "next": "/"})
        assert r.status_code == 303, r.text[:500]
        r = client.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 200
        assert "gradio" in r.text.lower()


def test_helm_test_pod_passes(release: Any) -> None:
    name = f"{FULLNAME}-test-gateway"
    release.play(name)
    code = release.wait_exit(name, timeout=300)
    assert code == 0, release.logs(name)
