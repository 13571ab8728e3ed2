"""Indexer benchmark: ``python -m omnirag.indexer run`` over the CMRC 2018 trial passages.

One Markdown file per passage (``# <title>\\n\\n<context>``) goes into a temporary directory with a
spec beside it; the omnirag embedder runs as a subprocess on a free loopback port. Each repeat:

1. full run into a fresh index root (a subprocess, as people run it) → documents/s and chunks/s
   (``chunks_embedded / seconds`` of the run's own summary; the wall time with Python's start is
   reported too);
2. the embedder's own throughput on the very chunk texts the indexer embedded (read back from the
   published version), sent to ``POST /v1/embed`` as the indexer sends them: batches of 64, two
   requests in flight, the same body → ``ratio_vs_embedder`` = indexer chunks/s ÷ embedder chunks/s
   (target >= 0.8); one request with all texts is measured for reference;
3. an unchanged re-run → ``rerun_fraction`` = its seconds ÷ the full run's (target <= 0.05); it must
   embed nothing and publish nothing.

Before each timed phase the bench waits (boundedly) until the 1-minute load average is below
``--max-load``: the machine is shared and has few cores. Keys are medians over ``--repeats``.
Results go to ``bench/results/indexer.json``.

    .venv/bin/python bench/indexer.py [--repeats 3] [--cmrc PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omnirag_harness.processes import (
    SERVICES,
    ServiceError,
    ServiceProcess,
    cpu_seconds,
    free_port,
    http_get,
    machine_busy_seconds,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CMRC = REPO / "bench/data/cmrc2018/cmrc2018_trial.json"
DEFAULT_OUT = REPO / "bench/results/indexer.json"
KB = "cmrc"
CHUNK_SIZE, CHUNK_OVERLAP = 800, 100
BATCH_SIZE, CONCURRENCY = 64, 2  # the indexer's defaults (INDEXER_EMBED_BATCH_SIZE / _CONCURRENCY)
TARGETS = {"ratio_vs_embedder": 0.8, "rerun_fraction": 0.05}
MAX_INPUTS_PER_REQUEST = 2048  # the embedder's default limit; a larger single request is skipped


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------
# Corpus and spec
# ---------------------------------------------------------------------------------------------------


def write_corpus(cmrc: Path, docs_dir: Path) -> dict[str, Any]:
    data = json.loads(cmrc.read_text(encoding="utf-8"))
    docs_dir.mkdir(parents=True)
    n = chars = 0
    for article in data["data"]:
        title = " ".join(str(article.get("title") or "").split()) or article.get("id", "untitled")
        for para in article["paragraphs"]:
            text = f"# {title}\n\n{para['context'].strip()}\n"
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(para["id"]))
            path = docs_dir / f"{n:04d}-{name}.md"
            path.write_text(text, encoding="utf-8")
            n += 1
            chars += len(text)
    if not n:
        raise BenchError(f"{cmrc}: no passages")
    return {"documents": n, "chars": chars, "chars_per_document": chars / n}


def write_spec(path: Path, docs_dir: Path) -> None:
    # JSON is YAML: no dependency needed to write it.
    spec = {
        "knowledgeBases": [
            {
                "name": KB,
                "sources": [{"type": "local", "path": docs_dir.name, "glob": "**/*.md"}],
                "splitter": {"chunkSize": CHUNK_SIZE, "chunkOverlap": CHUNK_OVERLAP},
            }
        ]
    }
    path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# Machine state
# ---------------------------------------------------------------------------------------------------


class OtherCpu:
    """CPU seconds used by processes other than the bench, the indexer and the embedder, over a phase."""

    def __init__(self, emb: Embedder) -> None:
        self.emb = emb

    def __enter__(self) -> OtherCpu:
        self.m0, self.c0, self.p0 = machine_busy_seconds(), children_cpu(), time.process_time()
        self.e0 = self.emb.cpu() or 0.0
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        ours = (
            (children_cpu() - self.c0) + (time.process_time() - self.p0) + ((self.emb.cpu() or 0.0) - self.e0)
        )
        wall = time.perf_counter() - self.t0
        self.seconds = max(0.0, machine_busy_seconds() - self.m0 - ours)
        self.cores = self.seconds / wall if wall > 0 else 0.0


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_load(max_load: float, max_wait: float) -> dict[str, Any]:
    """Wait (at most ``max_wait`` s) until the 1-minute load average is below ``max_load``."""
    start = time.monotonic()
    before = os.getloadavg()[0]
    while True:
        load = os.getloadavg()
        waited = time.monotonic() - start
        if load[0] < max_load or waited >= max_wait:
            return {
                "waited_s": round(waited, 1),
                "load_before": round(before, 2),
                "loadavg": [round(x, 2) for x in load],
                "quiet": load[0] < max_load,
            }
        time.sleep(2.0)


# ---------------------------------------------------------------------------------------------------
# The embedder
# ---------------------------------------------------------------------------------------------------


class Embedder(ServiceProcess):
    """The embedder (omnirag_harness.processes: its own session, stopped with what it started), its
    log appended to across restarts."""

    def __init__(self, log_path: Path) -> None:
        embedder = SERVICES["embedder"]
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **embedder.address_env(port)}
        env.setdefault("EMBEDDER_LOG_LEVEL", "WARNING")
        super().__init__("embedder", embedder.argv, env, port, log_path, append_log=True)
        self.restarts: list[str] = []

    def ensure_running(self, timeout: float) -> str | None:
        """Restart the embedder if it died (the machine is shared); returns why it was restarted."""
        why = None
        if self.proc is None or self.proc.poll() is not None:
            why = f"exited with {self.proc.returncode if self.proc else None}: {self.log_tail(5)}"
        else:
            try:
                if http_get(self.url("/readyz"), timeout=5)[0] != 200:
                    why = "not ready"
            except OSError as exc:
                why = f"unreachable: {exc}"
        if why is not None:
            self.stop()
            self.restarts.append(why)
            self.start(timeout)
        return why

    def cpu(self) -> float | None:
        cpu = cpu_seconds(self.proc.pid) if self.proc else math.nan
        return None if math.isnan(cpu) else cpu

    def info(self) -> dict[str, Any]:
        status, body = http_get(self.url("/v1/info"), timeout=10)
        if status != 200:
            raise BenchError(f"/v1/info answered {status}")
        return json.loads(body)


def embed_body_extra(info: dict[str, Any]) -> dict[str, Any]:
    """What the indexer's EmbedClient adds to each request (omnirag/indexer/embed.py)."""
    extra: dict[str, Any] = {"normalize": True}
    if "document" in (info.get("prompts") or {}):
        extra["prompt_name"] = "document"
    return extra


async def _embed_batches(
    url: str, texts: list[str], batch_size: int, concurrency: int, extra: dict[str, Any], request_s: float
) -> dict[str, Any]:
    import httpx

    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    gate = asyncio.Semaphore(concurrency)
    counts: list[int] = [0] * len(batches)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=request_s, limits=limits) as client:
        # One small request first, so that connection setup is not timed (the indexer's /v1/info does it).
        (await client.get("/v1/info")).raise_for_status()

        async def one(i: int, batch: list[str]) -> None:
            async with gate:
                resp = await client.post("/v1/embed", json={"inputs": batch, **extra})
                resp.raise_for_status()
                counts[i] = len(json.loads(resp.content)["embeddings"])

        started = time.perf_counter()
        await asyncio.gather(*(one(i, b) for i, b in enumerate(batches)))
        seconds = time.perf_counter() - started
    if sum(counts) != len(texts):
        raise BenchError(f"the embedder returned {sum(counts)} vectors for {len(texts)} texts")
    return {
        "texts": len(texts),
        "requests": len(batches),
        "batch_size": batch_size,
        "concurrency": concurrency,
        "seconds": seconds,
        "chunks_per_s": len(texts) / seconds,
    }


def embed_throughput(
    emb: Embedder, texts: list[str], batch_size: int, concurrency: int, extra: dict[str, Any], timeout: float
) -> dict[str, Any]:
    cpu0 = emb.cpu()
    out = asyncio.run(
        asyncio.wait_for(
            _embed_batches(emb.url(), texts, batch_size, concurrency, extra, timeout), timeout=timeout
        )
    )
    cpu1 = emb.cpu()
    if cpu0 is not None and cpu1 is not None:
        out["embedder_cpu_s"] = cpu1 - cpu0
    return out


# ---------------------------------------------------------------------------------------------------
# The indexer
# ---------------------------------------------------------------------------------------------------


def run_indexer(spec: Path, root: Path, emb: Embedder, timeout: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "INDEXER_INDEX_ROOT": str(root),
        "INDEXER_EMBEDDER_URL": emb.url(),
        "INDEXER_EMBED_BATCH_SIZE": str(BATCH_SIZE),
        "INDEXER_EMBED_CONCURRENCY": str(CONCURRENCY),
        "INDEXER_LOG_LEVEL": "WARNING",
        "INDEXER_REDIS_URL": "",
    }
    argv = [sys.executable, "-m", "omnirag.indexer", "run", "--config", str(spec), "--kb", KB, "--json"]
    cpu0, emb0 = children_cpu(), emb.cpu()
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the indexer did not finish within {timeout:.0f}s") from exc
    wall = time.perf_counter() - started
    cpu1, emb1 = children_cpu(), emb.cpu()
    if proc.returncode != 0:
        raise BenchError(f"the indexer exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if len(lines) != 1:
        raise BenchError(f"expected one JSON summary line, got:\n{proc.stdout[-3000:]}")
    summary = json.loads(lines[0])
    return {
        "wall_s": wall,
        "seconds": float(summary["seconds"]),
        "outside_run_s": wall - float(summary["seconds"]),  # interpreter start, imports, exit
        "indexer_cpu_s": cpu1 - cpu0,
        "embedder_cpu_s": (emb1 - emb0) if emb0 is not None and emb1 is not None else None,
        "summary": {k: v for k, v in summary.items() if k not in ("problems", "refused")},
        "problems": len(summary.get("problems") or []),
        "refused": len(summary.get("refused") or []),
        "stderr_tail": proc.stderr.strip().splitlines()[-5:],
    }


def process_start(timeout: float) -> float:
    """Wall time of ``python -m omnirag.indexer --help``: the interpreter and the CLI's imports."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "omnirag.indexer", "--help"],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return time.perf_counter() - started


def chunk_texts(root: Path) -> list[str]:
    from omnirag.index import open_current

    coll = open_current(root, KB)
    if coll is None:
        raise BenchError(f"no published version of {KB!r} under {root}")
    try:
        texts = [text for text, _ in coll.chunks().values()]
    finally:
        coll.close()
    return texts


# ---------------------------------------------------------------------------------------------------
# One repeat
# ---------------------------------------------------------------------------------------------------


def one_repeat(
    i: int,
    tmp: Path,
    spec: Path,
    documents: int,
    emb: Embedder,
    extra: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    root = tmp / f"index-{i}"
    rep: dict[str, Any] = {"repeat": i}

    emb.ensure_running(args.embedder_start_timeout)
    rep["full_load"] = wait_load(args.max_load, args.max_wait)
    with OtherCpu(emb) as other:
        full = run_indexer(spec, root, emb, args.timeout)
    full["other_cpu_s"], full["other_cores"] = other.seconds, other.cores
    s = full["summary"]
    if s["added"] != documents or not s["published"] or s["chunks_embedded"] != s["chunks_total"]:
        raise BenchError(f"unexpected full-run summary: {s}")
    full["documents_per_s"] = documents / full["seconds"]
    full["chunks_per_s"] = s["chunks_embedded"] / full["seconds"]
    full["chunks_per_s_wall"] = s["chunks_embedded"] / full["wall_s"]
    rep["full"] = full

    texts = chunk_texts(root)
    if len(texts) != s["chunks_embedded"]:
        raise BenchError(f"{len(texts)} chunks in the version, the run embedded {s['chunks_embedded']}")
    rep["chunk_chars_mean"] = statistics.fmean(len(t) for t in texts)

    emb.ensure_running(args.embedder_start_timeout)
    rep["embedder_load"] = wait_load(args.max_load, args.max_wait)
    with OtherCpu(emb) as other:
        embedder = embed_throughput(emb, texts, BATCH_SIZE, CONCURRENCY, extra, args.timeout)
    embedder["other_cpu_s"], embedder["other_cores"] = other.seconds, other.cores
    rep["embedder"] = embedder
    rep["ratio_vs_embedder"] = full["chunks_per_s"] / embedder["chunks_per_s"]
    rep["ratio_vs_embedder_wall"] = full["chunks_per_s_wall"] / embedder["chunks_per_s"]

    if len(texts) <= MAX_INPUTS_PER_REQUEST and not args.skip_single:
        rep["single_load"] = wait_load(args.max_load, args.max_wait)
        rep["embedder_single_request"] = embed_throughput(emb, texts, len(texts), 1, extra, args.timeout)

    emb.ensure_running(args.embedder_start_timeout)
    rep["rerun_load"] = wait_load(args.max_load, args.max_wait)
    with OtherCpu(emb) as other:
        rerun = run_indexer(spec, root, emb, args.timeout)
    rerun["other_cpu_s"], rerun["other_cores"] = other.seconds, other.cores
    r = rerun["summary"]
    rerun["embedded_nothing"] = r["chunks_embedded"] == 0
    rerun["published_nothing"] = not r["published"]
    if not rerun["embedded_nothing"] or r["unchanged"] != documents:
        raise BenchError(f"the unchanged re-run did work: {r}")
    rep["rerun"] = rerun
    rep["rerun_fraction"] = rerun["seconds"] / full["seconds"]
    rep["rerun_fraction_wall"] = rerun["wall_s"] / full["wall_s"]
    shutil.rmtree(root, ignore_errors=True)
    return rep


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def median_of(reps: list[dict[str, Any]], *path: str) -> float:
    values = []
    for rep in reps:
        v: Any = rep
        for key in path:
            v = v[key]
        values.append(float(v))
    return statistics.median(values)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("faiss-cpu", "langchain-text-splitters", "torch", "sentence-transformers", "httpx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def summarize(reps: list[dict[str, Any]]) -> dict[str, Any]:
    med = {
        "documents_per_s": median_of(reps, "full", "documents_per_s"),
        "chunks_per_s": median_of(reps, "full", "chunks_per_s"),
        "chunks_per_s_wall": median_of(reps, "full", "chunks_per_s_wall"),
        "full_seconds": median_of(reps, "full", "seconds"),
        "full_wall_s": median_of(reps, "full", "wall_s"),
        "embedder_chunks_per_s": median_of(reps, "embedder", "chunks_per_s"),
        "embedder_seconds": median_of(reps, "embedder", "seconds"),
        "ratio_vs_embedder": median_of(reps, "ratio_vs_embedder"),
        "ratio_vs_embedder_wall": median_of(reps, "ratio_vs_embedder_wall"),
        "rerun_seconds": median_of(reps, "rerun", "seconds"),
        "rerun_wall_s": median_of(reps, "rerun", "wall_s"),
        "rerun_fraction": median_of(reps, "rerun_fraction"),
        "rerun_fraction_wall": median_of(reps, "rerun_fraction_wall"),
    }
    if all("embedder_single_request" in r for r in reps):
        med["embedder_single_request_chunks_per_s"] = median_of(
            reps, "embedder_single_request", "chunks_per_s"
        )
    # Where the full run's time goes, roughly: time the embedder alone needs for these texts, the rest.
    med["full_minus_embedding_s"] = med["full_seconds"] - med["embedder_seconds"]
    return med


def render(report: dict[str, Any]) -> str:
    m, t = report["medians"], report["targets"]
    ok = report["pass"]
    lines = [
        f"indexer bench: {report['corpus']['documents']} documents, {report['chunks']} chunks, "
        f"{report['repeats']} repeats (medians), {report['cores']} cores",
        f"  full run         {m['full_seconds']:7.2f} s  (wall {m['full_wall_s']:.2f} s)   "
        f"{m['documents_per_s']:7.1f} docs/s  {m['chunks_per_s']:7.1f} chunks/s",
        f"  embedder alone   {m['embedder_seconds']:7.2f} s                    "
        f"{m['embedder_chunks_per_s']:7.1f} chunks/s  (batches of {BATCH_SIZE}, {CONCURRENCY} in flight)",
    ]
    if "embedder_single_request_chunks_per_s" in m:
        lines.append(
            f"  embedder, 1 req                                     "
            f"{m['embedder_single_request_chunks_per_s']:7.1f} chunks/s"
        )
    lines += [
        f"  unchanged rerun  {m['rerun_seconds']:7.2f} s  (wall {m['rerun_wall_s']:.2f} s)",
        f"  ratio_vs_embedder {m['ratio_vs_embedder']:.3f} (target >= {t['ratio_vs_embedder']}, "
        f"{'PASS' if ok['ratio_vs_embedder'] else 'FAIL'}; "
        f"with process start {m['ratio_vs_embedder_wall']:.3f})",
        f"  rerun_fraction    {m['rerun_fraction']:.3f} (target <= {t['rerun_fraction']}, "
        f"{'PASS' if ok['rerun_fraction'] else 'FAIL'}; with process start {m['rerun_fraction_wall']:.3f})",
        f"  process start (python -m omnirag.indexer --help): {report['process_start_s']:.2f} s",
        f"  other processes during timed phases: up to {report['max_other_cores']:.2f} cores; "
        f"load-average gate met in every phase: {report['all_phases_quiet']}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cmrc", type=Path, default=DEFAULT_CMRC, help="CMRC 2018 (SQuAD format) JSON file")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-load", type=float, default=0.8, help="1-minute load average to wait for")
    p.add_argument("--max-wait", type=float, default=240.0, help="seconds to wait for it, at most")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one indexer run may take")
    p.add_argument("--embedder-start-timeout", type=float, default=300.0)
    p.add_argument("--skip-single", action="store_true", help="skip the one-request reference")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cmrc.is_file():
        print(f"error: {args.cmrc} not found (use --cmrc)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "benchmark": "indexer",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": ["python", "bench/indexer.py", *(argv if argv is not None else sys.argv[1:])],
        "targets": TARGETS,
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "settings": {
            "chunk_size": CHUNK_SIZE,
            "chunk_overlap": CHUNK_OVERLAP,
            "embed_batch_size": BATCH_SIZE,
            "embed_concurrency": CONCURRENCY,
            "max_load": args.max_load,
            "max_wait_s": args.max_wait,
        },
        "loadavg_start": list(os.getloadavg()),
    }
    tmp = Path(tempfile.mkdtemp(prefix="omnirag-bench-indexer-"))
    emb = Embedder(tmp / "embedder.log")
    try:
        corpus = write_corpus(args.cmrc, tmp / "docs")
        spec = tmp / "kb.yaml"
        write_spec(spec, tmp / "docs")
        report["corpus"] = {"path": str(args.cmrc), **corpus}
        report["embedder_start_s"] = emb.start(args.embedder_start_timeout)
        info = emb.info()
        keys = ("model", "dimension", "max_seq_length", "prompts")
        report["embedder_info"] = {k: info.get(k) for k in keys}
        extra = embed_body_extra(info)
        report["embed_body_extra"] = extra
        # Warm the embedder (first passes allocate) so that repeat 1 is not penalized.
        embed_throughput(emb, ["预热文本。" * 40] * 32, BATCH_SIZE, CONCURRENCY, extra, args.timeout)
        report["process_start_s"] = statistics.median(process_start(120) for _ in range(3))
        reps = []
        for i in range(1, args.repeats + 1):
            rep = one_repeat(i, tmp, spec, corpus["documents"], emb, extra, args)
            reps.append(rep)
            full, rerun = rep["full"], rep["rerun"]
            print(
                f"repeat {i}: full {full['seconds']:.2f}s ({full['chunks_per_s']:.1f} chunks/s), "
                f"embedder {rep['embedder']['chunks_per_s']:.1f} chunks/s, "
                f"ratio {rep['ratio_vs_embedder']:.3f}, "
                f"rerun {rerun['seconds']:.3f}s ({rep['rerun_fraction']:.3f})",
                flush=True,
            )
        report["repeats"] = len(reps)
        report["chunks"] = reps[0]["full"]["summary"]["chunks_total"]
        report["runs"] = reps
        report["medians"] = summarize(reps)
        report["ratio_vs_embedder"] = report["medians"]["ratio_vs_embedder"]
        report["rerun_fraction"] = report["medians"]["rerun_fraction"]
        report["pass"] = {
            "ratio_vs_embedder": report["ratio_vs_embedder"] >= TARGETS["ratio_vs_embedder"],
            "rerun_fraction": report["rerun_fraction"] <= TARGETS["rerun_fraction"],
        }
        report["all_phases_quiet"] = all(
            r[k]["quiet"] for r in reps for k in ("full_load", "embedder_load", "rerun_load")
        )
        # Other processes' CPU during the timed phases (cores, on average): the load average lags.
        report["max_other_cores"] = max(
            r[k]["other_cores"] for r in reps for k in ("full", "embedder", "rerun")
        )
        report["loadavg_end"] = list(os.getloadavg())
        report["embedder_restarts"] = emb.restarts
    except (BenchError, ServiceError):
        print(f"embedder restarts: {emb.restarts}\nembedder log:\n{emb.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        emb.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(render(report))
    print(f"→ {args.out}")
    return 0 if all(report["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
