"""A real Prometheus (Debian's `prometheus`) scrapes the running stack, as the chart's
ServiceMonitors would in a cluster (job = the Service's name, namespace = the release's), with the
chart's alert rules loaded. After a short load (a chat, an upload, a search) it must see every
target up, every metric the Grafana dashboard and the alerts use, with the labels they group and
select by, and data behind every panel of the dashboard.

What cannot run here is said where it is left out: vLLM (its panels and alerts use vllm:* series)
and kube-state-metrics (the CronJob alerts use kube_* series); `promtool test rules` covers those
alerts (tests/chart/test_alert_rules.py)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from omnirag_harness.gateway_stack import AUTH, DEV_KEY, REPO, GatewayFactory
from omnirag_harness.indexer import WorkerProcess
from omnirag_harness.processes import free_port, stop_process
from omnirag_harness.servers import serve_in_thread

NAMESPACE = "omnirag"
RELEASE = "omnirag"  # helm's release: the chart's names are omnirag-<component>
DASHBOARD = REPO / "charts/omnirag/files/grafana-dashboard.json"
CHART = REPO / "charts/omnirag"
#: Series this machine cannot produce: vLLM's own (no GPU) and kube-state-metrics' (no cluster).
ELSEWHERE = re.compile(r"^(vllm:|kube_)")


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make system-deps` installs Debian's prometheus packages")
    return found


@pytest.fixture(scope="module")
def gateway_url(gateway_factory: GatewayFactory) -> Iterator[str]:
    with gateway_factory() as base:
        yield base


@pytest.fixture(scope="module")
def ui_url(gateway_url: str) -> Iterator[str]:
    from omnirag.ui.app import create_app
    from omnirag.ui.config import UiSettings

    settings = UiSettings(
        gateway_url=gateway_url, api_key=DEV_KEY, log_json=False, local_password=None, oidc_issuer=None
    )
    with serve_in_thread(create_app(settings), graceful_seconds=1) as base:
        yield base


@pytest.fixture(scope="module")
def worker(
    redis_url: str, embedder_url: str, index_root: Path, uploads_dir: Path, tmp_path_factory: Any
) -> Iterator[WorkerProcess]:
    """The upload worker, as its own process, on the stack's index and uploads."""
    workdir = tmp_path_factory.mktemp("worker")
    env = {
        "INDEXER_REDIS_URL": redis_url,
        "INDEXER_EMBEDDER_URL": embedder_url,
        "INDEXER_INDEX_ROOT": str(index_root),
        "INDEXER_UPLOADS_DIR": str(uploads_dir),
        "INDEXER_METRICS_REFRESH_SECONDS": "0.5",
        "INDEXER_LOG_LEVEL": "INFO",
    }
    with WorkerProcess(env, workdir) as proc:
        proc.metrics(timeout=120)
        yield proc


@pytest.fixture(scope="module")
def redis_exporter(redis_url: str, tmp_path_factory: Any) -> Iterator[str]:
    """Debian's redis_exporter (the chart's Redis sidecar) on the stack's Redis; yields host:port."""
    port = free_port()
    log = (tmp_path_factory.mktemp("redis-exporter") / "log").open("wb")
    proc = subprocess.Popen(
        [
            binary("prometheus-redis-exporter"),
            f"--redis.addr={redis_url}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


@functools.cache
def rendered_rules() -> dict[str, Any]:
    """The chart's PrometheusRule (defaults, monitoring on) as a rules file."""
    helm = binary("helm")
    proc = subprocess.run(
        [
            helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--set", "metrics.serviceMonitor.enabled=true",
            "--set", "metrics.prometheusRule.enabled=true",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (rule,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(
    gateway_url: str,
    embedder_url: str,
    retriever_url: str,
    ui_url: str,
    worker: WorkerProcess,
    redis_exporter: str,
    tmp_path_factory: Any,
) -> Iterator[Prometheus]:
    """Prometheus scraping each service every second, as the chart's ServiceMonitors would."""
    home = tmp_path_factory.mktemp("prometheus")
    targets = {
        "gateway": gateway_url,
        "embedder": embedder_url,
        "retriever": retriever_url,
        "ui": ui_url,
        "indexer-worker": worker.metrics_url.removesuffix("/metrics"),
        "redis": "http://" + redis_exporter,
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": f"{RELEASE}-{component}",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [url.removeprefix("http://")], "labels": {"namespace": NAMESPACE}}
                ],
            }
            for component, url in targets.items()
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    (home / "rules.yaml").write_text(yaml.safe_dump(rendered_rules()))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("prometheus did not start:\n" + (home / "prometheus.log").read_text()[-3000:])
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        stop_process(proc)
        log.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def loaded(prometheus: Prometheus, gateway_url: str, retriever_url: str, ui_url: str) -> Prometheus:
    """A short load, as an operator's first minutes would bring: a RAG chat, an upload made
    searchable by the worker, a search, the page; then a few scrapes."""
    chat = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Which port does the gateway use?"}],
            "max_tokens": 16,
        },
        headers=AUTH,
        timeout=300,
    )
    assert chat.status_code == 200, chat.text
    up = httpx.post(
        f"{gateway_url}/v1/collections/monitoring/documents",
        json={"text": "The quarterly wombat census starts on Mondays.", "source": "census.txt"},
        headers=AUTH,
        timeout=30,
    )
    assert up.status_code == 202, up.text
    job = up.json()["job_id"]

    def done() -> bool:
        status = httpx.get(f"{gateway_url}/v1/ingest/{job}", headers=AUTH, timeout=10).json()
        assert status["status"] not in ("failed", "dead"), status
        return bool(status["status"] == "done")

    wait_for("the upload to be indexed", done)
    wait_for(
        "the retriever to serve the upload",
        lambda: (
            httpx.post(
                f"{retriever_url}/v1/collections/monitoring/search",
                json={"query": "wombat census", "k": 3, "mode": "sparse"},
                timeout=30,
            ).status_code
            == 200
        ),
    )
    assert httpx.get(ui_url + "/", timeout=30).status_code < 500
    # Enough scrapes after the load for a rate() over 30 s.
    time.sleep(5)
    return prometheus


def test_every_target_is_up(prometheus: Prometheus) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        active = prometheus.api("targets")["activeTargets"]
        return active if active and all(t["health"] == "up" for t in active) else None

    try:
        active = wait_for("every target up", all_up, timeout=60)
    except pytest.fail.Exception:
        active = prometheus.api("targets")["activeTargets"]
        states = [(t["labels"]["job"], t["health"], t["lastError"]) for t in active]
        raise AssertionError(json.dumps(states)) from None
    jobs = {t["labels"]["job"] for t in active}
    assert jobs == {
        f"{RELEASE}-{c}" for c in ("gateway", "embedder", "retriever", "ui", "indexer-worker", "redis")
    }


# --- what the dashboard and the alerts ask of the metrics -----------------------------------------

SUBSTITUTE = {"$namespace": NAMESPACE, "$release": RELEASE, "$__rate_interval": "30s"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every panel, its variables filled in as Grafana would."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in SUBSTITUTE.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def rule_queries() -> list[tuple[str, str]]:
    return [
        (rule["alert"], rule["expr"])
        for g in rendered_rules()["groups"]
        for rule in g["rules"]
        if "alert" in rule
    ]


METRIC = re.compile(r"\b(omnirag_[a-z0-9_]+|vllm:[a-z0-9_:]+|kube_[a-z0-9_]+|up)\b(?!\s*\()")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\b(omnirag_[a-z0-9_]+|vllm:[a-z0-9_:]+|kube_[a-z0-9_]+|up)\s*\{([^}]*)\}")


def uses(expr: str) -> dict[str, set[str]]:
    """Each metric an expression reads, with the labels it selects or groups by (``le`` of a
    histogram's buckets included: it comes with them)."""
    grouped = {label.strip() for found in BY.findall(expr) for label in found.split(",") if label.strip()}
    out: dict[str, set[str]] = {}
    for name in METRIC.findall(expr):
        out.setdefault(name, set()).update(grouped)
    for name, matchers in SELECTOR.findall(expr):
        out.setdefault(name, set()).update(
            m.split("=")[0].strip(" !~") for m in matchers.split(",") if m.strip()
        )
    return out


def test_every_metric_the_dashboard_and_the_alerts_use_exists_with_its_labels(loaded: Prometheus) -> None:
    wanted: dict[str, set[str]] = {}
    for _, expr in dashboard_queries() + rule_queries():
        for name, labels in uses(expr).items():
            wanted.setdefault(name, set()).update(labels)
    problems = []
    for name, labels in sorted(wanted.items()):
        if ELSEWHERE.match(name):
            continue
        series = loaded.api("series", **{"match[]": f'{name}{{namespace="{NAMESPACE}"}}'})
        if not series:
            problems.append(f"{name}: no series")
            continue
        # A label may be grouped by in one query and not exist on another metric of it (e.g. `by
        # (status)`); each label must be on some series of each metric that query reads.
        missing = {label for label in labels if not any(s.get(label) for s in series)}
        if missing:
            problems.append(f"{name}: no series has {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_every_dashboard_panel_has_data_after_a_short_load(loaded: Prometheus) -> None:
    empty = []
    for title, expr in dashboard_queries():
        if any(ELSEWHERE.match(name) for name in uses(expr)):
            continue  # vLLM's panels: no vLLM here
        if not loaded.query(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)


def test_no_alert_fires_on_the_working_stack(loaded: Prometheus) -> None:
    """The chart's rules, loaded in this Prometheus, evaluated on the working stack: nothing fires
    but what needs what is not here (vLLM's models, the CronJobs' kube-state-metrics)."""
    firing = loaded.query('ALERTS{alertstate="firing"}')
    here = [a["metric"] for a in firing if a["metric"].get("component") not in ("vllm", "indexer")]
    assert not here, here
