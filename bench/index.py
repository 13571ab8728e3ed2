"""Segmented collections (issue 17): what a one-document commit, its disk, search over the segments
it leaves, compaction and a reload cost, from 1k to 1M chunks.

For each size and index type, in a fresh directory (random 384-d unit vectors, short texts):

1. base: one commit of N chunks from nothing (the full build a format 1 commit always paid);
2. twenty one-document commits (a changed chunk each), timed one by one; the disk of the base plus
   those 20 versions over the disk of the base alone;
3. search p50 (dense, one FAISS thread) with the 21 segments, then after a full compaction, and
   the two result lists compared (identical for Flat);
4. compaction throughput (chunks/s) and its time over the base build's;
5. a retriever's reload: RSS of a process serving the collection (steady), and its peak while it
   opens the version after one more one-document commit through a SegmentCache, beside the old
   one (as the retriever does) — over steady. The same without the cache (every segment opened
   again, what a format 1 reload cost) is the peer.

Targets (issue 17): one-document commit growth 1k→100k <= 2x (format 1: 91x), disk ratio <= 1.1,
search p50 segments/compacted <= 1.3, reload memory / steady <= 1.1. Writes bench/results/index.json.

    .venv/bin/python bench/index.py [--sizes 1000,10000,100000,1000000] [--types flat,ivfpq]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from omnirag.index import Document, EmbeddingInfo, IndexConfig, VersionWriter, open_current, read_current
from omnirag.index.compaction import compact

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench/results/index.json"
DIM = 384
EMB = EmbeddingInfo(model="bench/random-384", dimension=DIM, languages=["en"])
WORDS = [f"w{i}" for i in range(5000)]
BATCH = 20_000
TARGETS = {
    "commit_growth_1k_to_100k": 2.0,
    "disk_base_plus_20_over_base": 1.1,
    "search_p50_segments_over_compacted": 1.3,
    "reload_memory_over_steady": 1.1,
}
FORMAT1 = {  # the table, measured on the build machine before segments (seconds)
    "flat_one_document_commit_s": {"1000": 0.38, "10000": 4.5, "100000": 35.0},
    "hnsw_one_document_commit_s": {"1000": 0.88, "10000": 14.0, "30000": 54.0},
    "growth_1k_to_100k_flat": 91.0,
    "disk_1000_base_plus_3_mb": 15,
    "disk_100000_base_plus_3_gb": 1.5,
}


def du(path: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def docs(start: int, vecs: np.ndarray, rng: random.Random, salt: str = "") -> list[Document]:
    return [
        Document(
            id=f"c{start + i}",
            text=" ".join(rng.choices(WORDS, k=12)) + salt,
            metadata={"source": f"s{(start + i) % 1000}.md", "doc_id": f"d{(start + i) // 4}"},
            vector=vecs[i],
            content_hash=f"h{start + i}{salt}",
        )
        for i in range(len(vecs))
    ]


def search_p50s(
    colls: dict[str, Any], queries: np.ndarray
) -> tuple[dict[str, float], dict[str, list[list[str]]]]:
    """p50 (ms) and results of each collection over the same queries, interleaved (each query asked
    of every collection in turn, the order rotating): a noisy moment of the machine slows all of
    them alike rather than the one measured then."""
    names = list(colls)
    for q in queries[:3]:
        for name in names:
            colls[name].search(vector=q, k=10, mode="dense")
    lat: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[list[str]]] = {n: [] for n in names}
    for j, q in enumerate(queries):
        for name in names[j % len(names) :] + names[: j % len(names)]:
            t = time.perf_counter()
            hits = colls[name].search(vector=q, k=10, mode="dense")
            lat[name].append(time.perf_counter() - t)
            results[name].append([h.id for h in hits])
    return {n: statistics.median(lat[n]) * 1000 for n in names}, results


RELOAD = """
import json, sys
from pathlib import Path
from omnirag.index.collection import Collection, SegmentCache
from omnirag.index.store import version_path

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

root, name, served, nxt, shared = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
cache = SegmentCache() if shared else None
floor = rss()
old = Collection.open(version_path(root, name, served), verify=False, cache=cache)
steady = rss()
new = Collection.open(version_path(root, name, nxt), verify=False, cache=cache)
during = rss()
print(json.dumps({"floor_mb": floor, "steady_mb": steady, "during_reload_mb": during,
                  "segments_opened": cache.opened if cache else len(old.segments) + len(new.segments)}))
"""


def reload_memory(root: Path, name: str, served: str, nxt: str, *, shared: bool) -> dict[str, Any]:
    """RSS of a process serving ``served`` (steady) and while it opens ``nxt`` beside it."""
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, str(root), name, served, nxt, "1" if shared else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    got["ratio"] = got["during_reload_mb"] / got["steady_mb"]
    return got


def one_size(root: Path, n: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    trng = random.Random(n)
    config = IndexConfig(type=kind)
    name = f"{kind}{n}"
    out: dict[str, Any] = {"chunks": n, "type": kind}
    t = time.perf_counter()
    with VersionWriter(root, name, EMB, config, base=None) as w:
        truth = np.zeros((n, DIM), dtype=np.float32)  # every live vector, for exact top-10s
        for start in range(0, n, BATCH):
            batch = vectors(rng, min(BATCH, n - start))
            truth[start : start + len(batch)] = batch
            w.upsert(docs(start, batch, trng))
        w.commit()
    out["base_build_s"] = time.perf_counter() - t
    base_disk = du(root / name)
    out["base_disk_bytes"] = base_disk
    commits = []
    for j in range(args.commits):
        target = int(trng.randrange(n))
        t = time.perf_counter()
        with VersionWriter(root, name, EMB, config) as w:
            changed = vectors(rng, 1)
            truth[target] = changed[0]
            w.upsert(docs(target, changed, trng, salt=f" r{j}"))
            w.commit()
        commits.append(time.perf_counter() - t)
    out["one_document_commit_s"] = {"median": statistics.median(commits), "all": commits}
    out["disk_after_commits_bytes"] = du(root / name)
    out["disk_ratio"] = out["disk_after_commits_bytes"] / base_disk
    queries = vectors(np.random.default_rng(7), args.queries)
    faiss.omp_set_num_threads(1)
    # Three states of the same live documents, side by side (hard links: segments never change):
    # the segments 20 commits left, what the tiered policy leaves of them, and one compacted segment.
    before, policy = f"{name}-segments", f"{name}-policy"
    shutil.copytree(root / name, root / before, copy_function=os.link)
    shutil.copytree(root / name, root / policy, copy_function=os.link)
    while compact(root, policy).version is not None:
        pass
    t = time.perf_counter()
    result = compact(root, name, full=True)
    out["compaction_s"] = time.perf_counter() - t
    out["compaction_chunks_per_s"] = result.chunks / out["compaction_s"]
    out["compaction_over_base_build"] = out["compaction_s"] / out["base_build_s"]
    colls = {
        key: open_current(root, n, verify=False)
        for key, n in [("segments", before), ("policy", policy), ("compacted", name)]
    }
    assert all(c is not None for c in colls.values()) and len(colls["compacted"].segments) == 1
    out["segments_before_compaction"] = len(colls["segments"].segments)
    out["segments_after_policy"] = len(colls["policy"].segments)
    p50, res = search_p50s(colls, queries)
    for c in colls.values():
        c.close()
    shutil.rmtree(root / before)
    shutil.rmtree(root / policy)
    seg_res, policy_res, one_res = res["segments"], res["policy"], res["compacted"]
    out["search_p50_ms"] = p50
    out["search_p50_segments_over_compacted"] = p50["segments"] / p50["compacted"]
    out["search_p50_policy_over_compacted"] = p50["policy"] / p50["compacted"]
    out["identical_results"] = seg_res == one_res == policy_res
    # Recall@10 against the exact top-10 of the live vectors (what Flat gives; for IVF-PQ the bar is
    # that segments do no worse than one index).
    exact = [[f"c{i}" for i in np.argsort(-(truth @ q), kind="stable")[:10]] for q in queries]

    def recall(results: list[list[str]]) -> float:
        return statistics.mean(len(set(r) & set(e)) / 10 for r, e in zip(results, exact, strict=True))

    out["recall_at_10"] = {
        "segments": recall(seg_res),
        "policy": recall(policy_res),
        "compacted": recall(one_res),
    }
    agree = [len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(seg_res, one_res, strict=True)]
    out["overlap_at_10"] = statistics.mean(agree)
    # A reload, in a fresh process each (an allocator that kept freed memory would hide the cost):
    # the served version loaded (steady), then the next one opened beside it.
    served = read_current(root, name)
    with VersionWriter(root, name, EMB, config) as w:
        w.upsert(docs(0, vectors(rng, 1), trng, salt=" reload"))
        w.commit()
    nxt = read_current(root, name)
    assert served is not None and nxt is not None
    out["reload"] = reload_memory(root, name, served, nxt, shared=True)
    if args.peer_reload:
        peer = reload_memory(root, name, served, nxt, shared=False)
        out["reload"]["without_sharing"] = peer
        out["reload"]["without_sharing_ratio"] = peer["ratio"]
    shutil.rmtree(root / name, ignore_errors=True)
    return out


def report_line(r: dict[str, Any]) -> None:
    p50 = r["search_p50_ms"]
    reload = r["reload"]
    peer = (
        f" (without sharing x{reload['without_sharing_ratio']:.2f})"
        if "without_sharing_ratio" in reload
        else ""
    )
    commit_ms = r["one_document_commit_s"]["median"] * 1000
    print(f"  base build {r['base_build_s']:.1f} s; one-document commit {commit_ms:.0f} ms")
    print(f"  disk with 20 more versions x{r['disk_ratio']:.3f}")
    print(
        f"  search p50 {p50['segments']:.2f} ms over {r['segments_before_compaction']} segments "
        f"(x{r['search_p50_segments_over_compacted']:.2f}), {p50['policy']:.2f} ms over the "
        f"{r['segments_after_policy']} the policy leaves (x{r['search_p50_policy_over_compacted']:.2f}), "
        f"{p50['compacted']:.2f} ms compacted; identical {r['identical_results']}; recall@10 "
        + " / ".join(f"{r['recall_at_10'][k]:.3f}" for k in ("segments", "policy", "compacted"))
    )
    share = r["compaction_over_base_build"]
    print(
        f"  compaction {r['compaction_chunks_per_s']:,.0f} chunks/s ({share:.2f} of a build); "
        f"reload memory x{reload['ratio']:.3f}{peer}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--types", default="flat,ivfpq")
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--no-peer-reload", dest="peer_reload", action="store_false")
    ap.add_argument("--root", type=Path, default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only the rows measured now in --out (a re-run of a few sizes), keeping the others",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.types.split(",")
    root = args.root or Path(tempfile.mkdtemp(prefix="omnirag-bench-index-"))
    runs: list[dict[str, Any]] = []
    try:
        for kind in kinds:
            for n in sizes:
                print(f"{kind} {n:>9,} chunks ...", flush=True)
                r = one_size(root, n, kind, args)
                runs.append(r)
                report_line(r)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    git = ["git", "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    commands = [" ".join(["python", "bench/index.py", *sys.argv[1:]]) + f" ({head or 'no git'})"]
    if args.merge and args.out.exists():
        before = json.loads(args.out.read_text())
        fresh = {(r["type"], r["chunks"]) for r in runs}
        kept = [r for r in before["runs"] if (r["type"], r["chunks"]) not in fresh]
        order = {k: i for i, k in enumerate(["flat", "hnsw", "ivfpq"])}
        runs = sorted(kept + runs, key=lambda r: (order.get(r["type"], 9), r["chunks"]))
        commands = [*before.get("commands_merged", [" ".join(before["command"])]), *commands]
        kinds = list(dict.fromkeys(r["type"] for r in runs))
    by = {(r["type"], r["chunks"]): r for r in runs}
    ratios: dict[str, Any] = {}
    for kind in kinds:
        if (kind, 1000) in by and (kind, 100000) in by:
            ratios[f"{kind}_commit_growth_1k_to_100k"] = (
                by[(kind, 100000)]["one_document_commit_s"]["median"]
                / by[(kind, 1000)]["one_document_commit_s"]["median"]
            )
        if (kind, 1000) in by and (kind, 1000000) in by:
            ratios[f"{kind}_commit_growth_1k_to_1m"] = (
                by[(kind, 1000000)]["one_document_commit_s"]["median"]
                / by[(kind, 1000)]["one_document_commit_s"]["median"]
            )
    ratios["disk_ratio_max"] = max(r["disk_ratio"] for r in runs)
    ratios["search_ratio_max"] = max(r["search_p50_segments_over_compacted"] for r in runs)
    ratios["search_policy_ratio_max"] = max(r["search_p50_policy_over_compacted"] for r in runs)
    ratios["reload_memory_ratio_max"] = max(r["reload"]["ratio"] for r in runs)
    ratios["flat_identical"] = all(r["identical_results"] for r in runs if r["type"] == "flat")
    ratios["recall_segments_minus_compacted_min"] = min(
        r["recall_at_10"]["segments"] - r["recall_at_10"]["compacted"] for r in runs
    )
    report = {
        "benchmark": "index",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["python", "bench/index.py", *sys.argv[1:]],
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__},
        "targets": TARGETS,
        "format1_before": FORMAT1,
        "ratios": ratios,
        "runs": runs,
        "commands_merged": commands,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(ratios, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
