"""Gateway benchmark: what the gateway adds to a chat request, against calling the LLM directly.

The reference upstream is a minimal OpenAI-compatible chat server started from this file in its own
process (``--upstream-worker``): a raw asyncio HTTP/1.1 server on uvloop that answers every
``POST /v1/chat/completions`` at once with the same small completion, as JSON or as an SSE stream
(chunked), and ``GET /v1/models``. It is the measurement's reference, not a feature: it costs a few
microseconds per request, so whatever is slower through the gateway is the gateway. It also writes
down, for every chat request, the moment (CLOCK_MONOTONIC, the clock ``time.perf_counter`` reads here)
the whole request had arrived, which shows from outside when the gateway called the LLM.

1. Pass-through (``"rag": false``). The same request bytes (body, headers, key) are sent (a) to the
   upstream directly and (b) through ``python -m omnirag.gateway`` (GATEWAY_LLM_BASE_URL at the
   upstream), non-streaming and streaming (latency = until the whole response has been read), at 1
   and 32 concurrent keep-alive clients (closed loop), ``--requests`` per run after a warm-up. A
   direct run and a gateway run form a pair, measured back to back (the order alternates), and
   ``overhead = gateway - direct`` at the same percentile, per pair; the median of ``--repeats``
   pairs is reported. ``overhead_p50_ms`` / ``overhead_p99_ms`` (targets <= 5 / <= 20 ms) are the
   worst (largest) of the 1- and 32-client levels, non-streaming. At 32 clients in a closed loop a
   request waits for the ones ahead of it, so that overhead is mostly queueing: 32 x the gateway's
   CPU per request / the cores it can use. The CPU per request of the gateway, the upstream and the
   load generator is recorded for that reason.
2. The RAG stage before the LLM. The real embedder, the example knowledge base (config/
   knowledge-bases.yaml) indexed by ``python -m omnirag.indexer run`` into a temporary index root,
   and the real retriever run beside the gateway. One client sends, for each of ``--rag-requests``
   standalone questions about the docs (so the history-aware rewrite is skipped), back to back:
   the retriever's own search with the gateway's body (hybrid, k=4: embed + retrieve, the limit), a
   RAG request through the gateway (collection docs, a session_id so history is loaded from Redis),
   the same question passed through the gateway (``"rag": false``, no session), and the same body
   sent to the upstream directly. The time from sending a request to the upstream having it is the
   work the gateway did before calling the LLM; ``rag_prep_p50_ms`` (target <= 50 ms) = p50 of it
   for RAG requests - p50 of it for pass-through requests (HTTP, auth, limits, parsing: common to
   both, and counted in the overhead above). So it is history + rewrite decision + retrieval (embed
   + search), as the gateway's ``omnirag_gateway_rag_prep_seconds`` histogram times it, plus what
   the RAG path spends between retrieval and the LLM call (the prompt, LangChain, the openai SDK's
   request build). That histogram over the same requests is reported too: its buckets are too
   coarse for a p50, but its mean is exact, so the means split the two parts. Also reported: the
   RAG request's whole latency minus the direct upstream call (an upper bound: it adds the answer's
   parsing, the history write and the response), and the ratio of rag_prep to the retriever's own
   search, the limit of the embed + retrieve part.

Every run waits (boundedly) for other processes to leave the cores alone, then counts the CPU that
neither the bench nor its servers used; a run during which that exceeds 0.25 core is discarded and
redone (twice at most; if it never gets quiet, the disturbed runs are kept and marked). Results go
to ``bench/results/gateway.json``.

    .venv/bin/python bench/gateway.py [--repeats 3] [--requests 800] [--profile]

``--profile`` adds a phase with a second gateway under cProfile, switched on only while the measured
requests run (pass-through at 1 and at 32 clients, then RAG), and prints the functions with the most
own time per request (cProfile slows call-heavy code several times: compare the rows, not the sums).

GATEWAY_* variables in the environment reach the gateway (and are recorded), except those the bench
sets (addresses, key, limits off), so settings can be compared without editing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omnirag_harness.processes import SERVICES, RedisProcess, cpu_seconds, free_port, http_get

# The generic helpers of the embedder bench (stdlib only): servers as subprocesses from a spec, the
# keep-alive HTTP/1.1 client, CPU accounting, the quiet-machine wait.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedder import (
    QUIET_CORES,
    BenchError,
    Connection,
    Server,
    ServerSpec,
    package_versions,
    percentile,
    run_async,
    wait_quiet,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench/results/gateway.json"
KB_SPEC = REPO / "config/knowledge-bases.yaml"
COLLECTION = "docs"
TARGETS = {"overhead_p50_ms": 5.0, "overhead_p99_ms": 20.0, "rag_prep_p50_ms": 50.0}  # all "<="
EXTRA_ATTEMPTS = 2  # disturbed runs are redone this many times at most
BENCH_KEY = "bench-gateway-key-0123456789abcdef"  # GATEWAY_DEV_KEY: 24+ characters
UPSTREAM_MODEL = "bench-upstream"
MAX_TOKENS = 64
RAG_TOP_K = 4  # the gateway's default top_k, so the direct search does what the gateway's does
GATEWAY_METRICS = (
    "omnirag_gateway_rag_prep_seconds",
    "omnirag_gateway_rewrites_total",
    "omnirag_gateway_degraded_total",
    "omnirag_gateway_empty_contexts_total",
)
# Standalone questions about docs/ (no "it", "that", "there"…, more than three words), so the
# gateway's needs_rewrite() skips the rewrite even with history; checked against it at start.
QUESTIONS = [
    "Which port does the gateway listen on?",
    "Which port does the embedder listen on?",
    "What port does the retriever use?",
    "Which port does the web UI listen on?",
    "Where is the chat history of a session kept?",
    "Which embedding model does omnirag use by default?",
    "How does the embedder merge requests from many clients?",
    "What happens when the embedder queue is full?",
    "How does the retriever swap in a new index version?",
    "Which file formats can the indexer read?",
    "How do I add my own documents to omnirag?",
    "How are Chinese questions answered with the default English model?",
    "Does the crawler fetch private or loopback addresses?",
    "Which command starts the whole local stack?",
    "How do I run every test of omnirag?",
    "What does the indexer do with documents removed from the source?",
    "Which search indexes does the retriever serve?",
    "How is omnirag deployed on a GPU Kubernetes cluster?",
    "Does omnirag ever load pickle files?",
    "How many writers per collection can run at a time?",
    "对话历史保存在哪里？",
    "如何在集群中部署？",
]


def mono() -> float:
    """CLOCK_MONOTONIC: one clock for every process on the machine, so the upstream's arrival times
    and this process's send times can be subtracted."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------------------------------
# The reference upstream (runs in its own process)
# ---------------------------------------------------------------------------------------------------

ANSWER_PARTS = ["The gateway listens", " on port 8000", " [1]."]
USAGE = {"prompt_tokens": 64, "completion_tokens": 12, "total_tokens": 76}


def _upstream_responses() -> dict[str, bytes]:
    """Every response the upstream sends, made once."""
    envelope = {"id": "chatcmpl-bench", "created": 1767225600, "model": UPSTREAM_MODEL}
    completion = envelope | {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(ANSWER_PARTS)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return envelope | {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in ANSWER_PARTS]
    events.append(chunk({}, "stop"))
    usage_event = envelope | {"object": "chat.completion.chunk", "choices": [], "usage": USAGE}

    def sse(objs: list[dict[str, Any]]) -> bytes:
        # One HTTP chunk per SSE event, as a real server flushes them; all written at once.
        payloads = [b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n" for o in objs]
        payloads.append(b"data: [DONE]\n\n")
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        return head + body

    def plain(obj: Any, status: str = "200 OK") -> bytes:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return (
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

    models = {"object": "list", "data": [{"id": UPSTREAM_MODEL, "object": "model", "owned_by": "bench"}]}
    return {
        "json": plain(completion),
        "stream": sse([*events]),
        "stream_usage": sse([*events, usage_event]),
        "models": plain(models),
        "not_found": plain(
            {"error": {"message": "not found", "type": "invalid_request_error"}}, "404 Not Found"
        ),
        "bad": plain(
            {"error": {"message": "bad request", "type": "invalid_request_error"}}, "400 Bad Request"
        ),
    }


def serve_upstream(port: int) -> None:
    import orjson

    responses = _upstream_responses()
    # (arrival, stream, last message's text) of each chat request, read and cleared by GET /_bench/log.
    log: collections.deque[tuple[float, bool, str]] = collections.deque(maxlen=200_000)

    def answer(method: str, path: str, body: bytes, arrived: float) -> bytes:
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                req = orjson.loads(body)
                last = req["messages"][-1].get("content")
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
                return responses["bad"]
            stream = bool(req.get("stream"))
            log.append((arrived, stream, last if isinstance(last, str) else json.dumps(last)))
            if not stream:
                return responses["json"]
            usage = (req.get("stream_options") or {}).get("include_usage")
            return responses["stream_usage" if usage else "stream"]
        if method == "GET" and path.endswith("/models"):
            return responses["models"]
        if method == "GET" and path == "/_bench/log":
            entries = list(log)
            log.clear()
            body = orjson.dumps({"entries": entries})
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            return head.encode() + body
        return responses["not_found"]

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport  # uvloop's transports are not asyncio.Transport subclasses
            self.buf = bytearray()
            with contextlib.suppress(OSError, AttributeError):
                transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection":
                        close = value.strip().lower() == "close"
                if len(self.buf) < end + 4 + length:
                    return  # the rest of the body is still on its way
                arrived = mono()
                body = bytes(self.buf[end + 4 : end + 4 + length])
                del self.buf[: end + 4 + length]
                method, path = lines[0].split(" ", 2)[:2]
                self.transport.write(answer(method, path.split("?", 1)[0], body, arrived))
                if close:
                    self.transport.close()
                    return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    run_async(main())


# ---------------------------------------------------------------------------------------------------
# The stack: Redis, the upstream, the gateway; for RAG also the embedder, the index and the retriever
# ---------------------------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def upstream_spec(port: int) -> ServerSpec:
    argv = [sys.executable, str(Path(__file__).resolve()), "--upstream-worker", str(port)]
    return ServerSpec("upstream", argv, base_env(), "/v1/chat/completions", "/v1/models")


def gateway_env(
    port: int, redis_url: str, upstream_port: int, embedder: str, retriever: str
) -> dict[str, str]:
    env = base_env() | SERVICES["gateway"].address_env(port)
    env.update(
        {
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_LLM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "GATEWAY_LLM_MODEL": UPSTREAM_MODEL,
            "GATEWAY_EMBEDDER_URL": embedder,
            "GATEWAY_RETRIEVER_URL": retriever,
            "GATEWAY_DEV_KEY": BENCH_KEY,
            # No limits in the way, but Redis is still asked for them on every request, as in production.
            "GATEWAY_DEFAULT_RPM": "0",
            "GATEWAY_DEFAULT_TPM": "0",
        }
    )
    return env


def gateway_spec(port: int, env: dict[str, str], profile_to: Path | None = None) -> ServerSpec:
    gateway = SERVICES["gateway"]
    argv = gateway.argv
    if profile_to is not None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--profiled-gateway", str(profile_to)]
    return ServerSpec(
        "gateway" if profile_to is None else "gateway-profiled", argv, env, "", gateway.ready_path
    )


def embedder_spec(port: int) -> ServerSpec:
    embedder = SERVICES["embedder"]
    env = base_env() | embedder.address_env(port)
    return ServerSpec("embedder", embedder.argv, env, "/v1/embeddings", embedder.ready_path)


def retriever_spec(port: int, index_root: Path, embedder_url: str) -> ServerSpec:
    retriever = SERVICES["retriever"]
    env = base_env() | retriever.address_env(port)
    env |= {"RETRIEVER_INDEX_ROOT": str(index_root), "RETRIEVER_EMBEDDER_URL": embedder_url}
    return ServerSpec("retriever", retriever.argv, env, "", retriever.ready_path)


def start(
    make: Callable[[int], ServerSpec], log_dir: Path, timeout: float, port: int | None = None
) -> Server:
    port = port or free_port()
    server = Server(make(port), port, log_dir)
    try:
        server.start(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def index_docs(index_root: Path, embedder_url: str, timeout: float, spec: Path = KB_SPEC) -> dict[str, Any]:
    """The knowledge bases of ``spec`` (the example one by default), indexed as `make run` does,
    by the indexer's own CLI."""
    env = base_env() | {
        "INDEXER_INDEX_ROOT": str(index_root),
        "INDEXER_EMBEDDER_URL": embedder_url,
        "INDEXER_REDIS_URL": "",  # a file lock: nothing else writes this temporary root
    }
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "omnirag.indexer", "run", "--config", str(spec), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise BenchError(f"the indexer failed ({out.returncode}):\n{out.stderr[-3000:]}")
    summaries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {"seconds": time.perf_counter() - started, "summaries": summaries}


# ---------------------------------------------------------------------------------------------------
# Requests and the load generator
# ---------------------------------------------------------------------------------------------------


def post(port: int, path: str, body: dict[str, Any]) -> bytes:
    """The exact bytes of one request, made before the clock starts; the same headers everywhere."""
    data = json.dumps(body, ensure_ascii=False).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {BENCH_KEY}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def chat_body(question: str, *, stream: bool, rag: bool, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        body["stream"] = True
    if rag:
        body["collection"] = COLLECTION
        if session_id:
            body["session_id"] = session_id
    else:
        body["rag"] = False
    return body


def answered(stream: bool) -> Callable[[int, bytes], bool]:
    """Whether a 200 response is a whole completion (streams: up to ``[DONE]``)."""
    if stream:
        return lambda status, body: status == 200 and body.rstrip().endswith(b"data: [DONE]")
    return lambda status, body: status == 200 and b'"choices"' in body


async def exchange(conn: Connection, request: bytes, request_timeout: float) -> tuple[int, bytes]:
    try:
        return await asyncio.wait_for(conn.exchange(request), request_timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        conn.close()  # its state is unknown: the next request opens a fresh one
        return 0, f"{type(exc).__name__}: {exc}".encode()


async def drive(
    port: int,
    requests: Sequence[bytes],
    clients: int,
    request_timeout: float,
    ok: Callable[[int, bytes], bool],
) -> tuple[float, list[float], int, str | None]:
    """Closed loop: ``clients`` keep-alive connections each send the next request as soon as their last
    one is answered. Returns wall seconds, latencies of good answers, the error count, the first error."""
    conns = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*(c.connect() for c in conns))  # connection setup is not measured
    todo = iter(range(len(requests)))  # shared: each request goes to exactly one client
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None

    async def client(conn: Connection) -> None:
        nonlocal errors, first_error
        for i in todo:
            t0 = time.perf_counter()
            status, body = await exchange(conn, requests[i], request_timeout)
            elapsed = time.perf_counter() - t0
            if ok(status, body):
                latencies.append(elapsed)
            else:
                errors += 1
                first_error = first_error or f"HTTP {status}: {body[:300]!r}"

    start_t = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        wall = time.perf_counter() - start_t
        for c in conns:
            c.close()
    return wall, latencies, errors, first_error


# ---------------------------------------------------------------------------------------------------
# CPU accounting and the quiet-machine gate
# ---------------------------------------------------------------------------------------------------


def machine_cpu_seconds() -> float:
    """CPU seconds every process used (user, nice, system) plus steal, from /proc/stat. Interrupt and
    softirq time is left out: loopback TCP is processed there, charged to no process, so the bench's
    own traffic would count as a neighbour's."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    return (f[0] + f[1] + f[2] + f[7]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Meter:
    """CPU of the bench itself, of each server it started, and of everything else, over one interval."""

    pids: dict[str, int]
    t0: float = 0.0
    own0: float = 0.0
    all0: float = 0.0
    srv0: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Meter:
        self.t0, self.own0, self.all0 = time.perf_counter(), time.process_time(), machine_cpu_seconds()
        self.srv0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.client_cpu = time.process_time() - self.own0
        self.server_cpu = {name: cpu_seconds(pid) - self.srv0[name] for name, pid in self.pids.items()}
        other = machine_cpu_seconds() - self.all0 - self.client_cpu - sum(self.server_cpu.values())
        self.other_cores = max(0.0, other) / max(self.wall, 1e-9)


class Clock:
    """The bench's deadline; quiet waits shrink as it comes closer, so the whole stays bounded."""

    def __init__(self, seconds: float, quiet_wait: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.quiet_wait = quiet_wait
        self.waited = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait_quiet(self) -> float:
        budget = min(self.quiet_wait, max(0.0, (self.left() - 60) / 10))
        waited = wait_quiet(budget) if budget > 0 else 0.0
        self.waited += waited
        return waited

    def may_retry(self) -> bool:
        return self.left() > 90


# ---------------------------------------------------------------------------------------------------
# 1. Pass-through: direct vs through the gateway
# ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    clients: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    client_cpu_us_per_request: float
    server_cpu_us_per_request: dict[str, float]
    server_cores: dict[str, float]  # CPU seconds per wall second: 1.0 is a process's whole core
    first_error: str | None = None


def load_run(
    target: str,
    port: int,
    requests: Sequence[bytes],
    clients: int,
    timeout: float,
    stream: bool,
    pids: dict[str, int],
) -> Run:
    with Meter(pids) as m:
        wall, lat, errors, first_error = run_async(drive(port, requests, clients, timeout, answered(stream)))
    lat.sort()
    n = len(requests)
    return Run(
        target=target,
        clients=clients,
        requests=n,
        seconds=wall,
        rps=(n - errors) / wall,
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        mean_ms=statistics.fmean(lat) * 1000 if lat else math.nan,
        errors=errors,
        client_cpu_us_per_request=m.client_cpu / n * 1e6,
        server_cpu_us_per_request={k: v / n * 1e6 for k, v in m.server_cpu.items()},
        server_cores={k: v / m.wall for k, v in m.server_cpu.items()},
        first_error=first_error,
    )


def passthrough_level(
    gateway: Server,
    upstream: Server,
    pids: dict[str, int],
    clients: int,
    stream: bool,
    args: argparse.Namespace,
    clock: Clock,
) -> dict[str, Any]:
    n = args.requests
    bodies = [chat_body(QUESTIONS[i % len(QUESTIONS)], stream=stream, rag=False) for i in range(n)]
    reqs = {
        "direct": [post(upstream.port, "/v1/chat/completions", b) for b in bodies],
        "gateway": [post(gateway.port, "/v1/chat/completions", b) for b in bodies],
    }
    ports = {"direct": upstream.port, "gateway": gateway.port}
    warm = min(n, max(100, 4 * clients))
    for target in ("direct", "gateway"):
        run = load_run(target, ports[target], reqs[target][:warm], clients, args.timeout, stream, pids)
        if run.errors:
            raise BenchError(f"{target}, {clients} clients, warm-up failed: {run.first_error}")
    pairs: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    for attempt in range(args.repeats + EXTRA_ATTEMPTS):
        if attempt >= args.repeats and not clock.may_retry():
            break
        waited = clock.wait_quiet()
        order = ("direct", "gateway") if attempt % 2 == 0 else ("gateway", "direct")
        # Neighbours are judged over the pair: a direct run lasts a fraction of a second, shorter than
        # the CPU counters' resolution (1/100 s per process) allows.
        with Meter(pids) as m:
            runs = {t: load_run(t, ports[t], reqs[t], clients, args.timeout, stream, pids) for t in order}
        pair = {
            "order": list(order),
            "quiet_wait_s": round(waited, 1),
            "other_cores": m.other_cores,
            "overhead_p50_ms": runs["gateway"].p50_ms - runs["direct"].p50_ms,
            "overhead_p99_ms": runs["gateway"].p99_ms - runs["direct"].p99_ms,
            "overhead_mean_ms": runs["gateway"].mean_ms - runs["direct"].mean_ms,
            **{t: asdict(r) for t, r in runs.items()},
        }
        (disturbed if pair["other_cores"] > QUIET_CORES else pairs).append(pair)
        if len(pairs) == args.repeats:
            break
    clean = bool(pairs)
    kept = pairs or disturbed  # never quiet: the disturbed pairs rather than nothing (marked)

    def med(path: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(path(p) for p in kept)

    errors = sum(p[t]["errors"] for p in kept for t in ("direct", "gateway"))
    out = {
        "clients": clients,
        "stream": stream,
        "requests_per_run": n,
        "overhead_p50_ms": med(lambda p: p["overhead_p50_ms"]),
        "overhead_p99_ms": med(lambda p: p["overhead_p99_ms"]),
        "overhead_mean_ms": med(lambda p: p["overhead_mean_ms"]),
        "clean": clean,
        "errors": errors,
    }
    for t in ("direct", "gateway"):
        out[t] = {
            "p50_ms": med(lambda p, t=t: p[t]["p50_ms"]),
            "p99_ms": med(lambda p, t=t: p[t]["p99_ms"]),
            "rps": med(lambda p, t=t: p[t]["rps"]),
            "client_cpu_us_per_request": med(lambda p, t=t: p[t]["client_cpu_us_per_request"]),
            "server_cpu_us_per_request": {
                name: med(lambda p, t=t, name=name: p[t]["server_cpu_us_per_request"][name]) for name in pids
            },
            "server_cores": {
                name: med(lambda p, t=t, name=name: p[t]["server_cores"][name]) for name in pids
            },
        }
    out["pairs"] = kept  # the medians' pairs: disturbed ones only when there was nothing else
    out["disturbed_pairs"] = disturbed if clean else []  # discarded
    first = next(
        (p[t]["first_error"] for p in kept for t in ("direct", "gateway") if p[t]["first_error"]), None
    )
    if first:
        out["first_error"] = first
    return out


# ---------------------------------------------------------------------------------------------------
# 2. The RAG stage before the LLM
# ---------------------------------------------------------------------------------------------------


def upstream_log(upstream: Server) -> list[tuple[float, bool, str]]:
    status, body = http_get(upstream.url("/_bench/log"))
    if status != 200:
        raise BenchError(f"the upstream's log answered {status}")
    return [tuple(e) for e in json.loads(body)["entries"]]  # type: ignore[misc]


def scrape(server: Server) -> dict[str, float]:
    status, body = http_get(server.url("/metrics"))
    if status != 200:
        return {}
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(GATEWAY_METRICS):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, Any]:
    """Count, exact mean and per-bucket counts (not cumulative) of one histogram between two scrapes."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta(f"{name}_count")
    buckets: dict[str, int] = {}
    previous = 0.0
    keys = [k for k in after if k.startswith(f"{name}_bucket")]
    for key in sorted(
        keys, key=lambda k: math.inf if "+Inf" in k else float(k.split('le="')[1].split('"')[0])
    ):
        cumulative = delta(key)
        le = key.split('le="')[1].split('"')[0]
        buckets[f"le_{le}"] = int(cumulative - previous)
        previous = cumulative
    return {
        "count": int(count),
        "mean_ms": delta(f"{name}_sum") / count * 1000 if count else None,
        "buckets": {k: v for k, v in buckets.items() if v},
    }


def counters_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, float]:
    return {
        k[len(name) :]: after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith(name) and not k.endswith("_created") and after[k] != before.get(k, 0.0)
    }


async def rag_loop(
    stack: dict[str, Server], questions: Sequence[str], session_id: str, request_timeout: float
) -> list[dict[str, Any]]:
    """One client; for each question the four requests back to back. Returns, per question, the send
    and done times of each (and the retriever's hit count)."""
    gw, up, rt = stack["gateway"], stack["upstream"], stack["retriever"]
    conns = {
        "gateway": Connection(gw.port),
        "upstream": Connection(up.port),
        "retriever": Connection(rt.port),
    }
    for c in conns.values():
        await c.connect()
    rows: list[dict[str, Any]] = []
    try:
        for q in questions:
            plan = [
                (
                    "search",
                    "retriever",
                    post(rt.port, f"/v1/collections/{COLLECTION}/search", search_body(q)),
                ),
                (
                    "rag",
                    "gateway",
                    post(
                        gw.port,
                        "/v1/chat/completions",
                        chat_body(q, stream=False, rag=True, session_id=session_id),
                    ),
                ),
                (
                    "pass",
                    "gateway",
                    post(gw.port, "/v1/chat/completions", chat_body(q, stream=False, rag=False)),
                ),
                (
                    "direct",
                    "upstream",
                    post(up.port, "/v1/chat/completions", chat_body(q, stream=False, rag=False)),
                ),
            ]
            row: dict[str, Any] = {"question": q}
            for name, where, request in plan:
                t0 = mono()
                status, body = await exchange(conns[where], request, request_timeout)
                t1 = mono()
                if status != 200:
                    raise BenchError(f"{name} of {q!r}: HTTP {status}: {body[:300]!r}")
                row[name] = (t0, t1)
                if name == "search":
                    row["hits"] = len(json.loads(body)["hits"])
                elif name == "rag":
                    answer = json.loads(body)
                    if not answer["omnirag"]["citations"]:
                        raise BenchError(
                            f"no sources for {q!r}: the gateway answered without calling the LLM"
                        )
                    if answer["omnirag"]["rewritten_query"] is not None or answer["omnirag"]["degraded"]:
                        raise BenchError(f"{q!r} was rewritten or degraded: {answer['omnirag']}")
            rows.append(row)
    finally:
        for c in conns.values():
            c.close()
    return rows


def search_body(q: str) -> dict[str, Any]:
    # What the gateway's retrieve() sends: OmniragVectorStore's hybrid search with its top_k.
    return {"k": RAG_TOP_K, "mode": "hybrid", "query": q}


def attach_arrivals(rows: list[dict[str, Any]], log: list[tuple[float, bool, str]]) -> None:
    """The upstream saw, in order, the rag, pass and direct requests of each row (one client)."""
    expected = [(row, name) for row in rows for name in ("rag", "pass", "direct")]
    if len(log) != len(expected):
        raise BenchError(f"the upstream saw {len(log)} chat requests, expected {len(expected)}")
    for (row, name), (arrived, _, text) in zip(expected, log, strict=True):
        if text != row["question"]:
            raise BenchError(f"upstream request out of order: {text[:80]!r} for {row['question'][:80]!r}")
        row[f"{name}_at_llm"] = arrived


def ms_stats(values: Sequence[float]) -> dict[str, float]:
    v = sorted(values)
    return {
        "p50_ms": percentile(v, 0.5) * 1000,
        "p99_ms": percentile(v, 0.99) * 1000,
        "mean_ms": statistics.fmean(v) * 1000,
    }


def rag_run(
    stack: dict[str, Server],
    pids: dict[str, int],
    questions: Sequence[str],
    session_id: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    upstream_log(stack["upstream"])  # clear
    before = scrape(stack["gateway"])
    with Meter(pids) as m:
        rows = run_async(rag_loop(stack, questions, session_id, args.timeout))
    after = scrape(stack["gateway"])
    attach_arrivals(rows, upstream_log(stack["upstream"]))
    to_llm = {k: [r[f"{k}_at_llm"] - r[k][0] for r in rows] for k in ("rag", "pass", "direct")}
    total = {k: [r[k][1] - r[k][0] for r in rows] for k in ("search", "rag", "pass", "direct")}
    st_llm = {k: ms_stats(v) for k, v in to_llm.items()}
    st_total = {k: ms_stats(v) for k, v in total.items()}
    n = len(rows)
    hist = histogram_delta(before, after, "omnirag_gateway_rag_prep_seconds")
    outside_mean = st_llm["rag"]["mean_ms"] - st_llm["pass"]["mean_ms"]
    return {
        "requests": n,
        "seconds": m.wall,
        "other_cores": m.other_cores,
        "rag_prep_mean_ms": outside_mean,
        "histogram_mean_ms": hist["mean_ms"],
        # What the RAG path spends before the LLM call beyond the histogram's stages (the prompt,
        # LangChain, the openai SDK's request build), less what pass-through spends before its call.
        "llm_call_setup_mean_ms": outside_mean - hist["mean_ms"] if hist["mean_ms"] is not None else None,
        "rag_prep_p50_ms": st_llm["rag"]["p50_ms"] - st_llm["pass"]["p50_ms"],
        "rag_prep_p99_ms": st_llm["rag"]["p99_ms"] - st_llm["pass"]["p99_ms"],
        "rag_prep_median_of_differences_ms": statistics.median(
            a - b for a, b in zip(to_llm["rag"], to_llm["pass"], strict=True)
        )
        * 1000,
        "rag_total_minus_direct_p50_ms": st_total["rag"]["p50_ms"] - st_total["direct"]["p50_ms"],
        "retriever_search_p50_ms": st_total["search"]["p50_ms"],
        "until_llm_called": st_llm,  # send → the upstream has the request
        "whole_request": st_total,
        "hits_per_search": statistics.fmean(r["hits"] for r in rows),
        "rag_prep_histogram": hist,
        "rewrites": counters_delta(before, after, "omnirag_gateway_rewrites_total"),
        "degraded": counters_delta(before, after, "omnirag_gateway_degraded_total"),
        "client_cpu_us_per_question": m.client_cpu / n * 1e6,
        "server_cpu_us_per_question": {k: v / n * 1e6 for k, v in m.server_cpu.items()},
    }


def bench_rag(
    stack: dict[str, Server], pids: dict[str, int], args: argparse.Namespace, clock: Clock
) -> dict[str, Any]:
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.rag_requests)]
    warm = rag_run(stack, pids, QUESTIONS * 2, "bench-warmup", args)  # every question answers from sources
    runs: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    for attempt in range(args.repeats + EXTRA_ATTEMPTS):
        if attempt >= args.repeats and not clock.may_retry():
            break
        waited = clock.wait_quiet()
        # A session per run: its history grows to GATEWAY_HISTORY_MAX_TURNS and is loaded every time.
        run = rag_run(stack, pids, questions, f"bench-{os.getpid()}-{attempt}", args)
        run["quiet_wait_s"] = round(waited, 1)
        (disturbed if run["other_cores"] > QUIET_CORES else runs).append(run)
        if len(runs) == args.repeats:
            break
    clean = bool(runs)
    kept = runs or disturbed
    keys = (
        "rag_prep_p50_ms",
        "rag_prep_p99_ms",
        "rag_prep_median_of_differences_ms",
        "rag_prep_mean_ms",
        "histogram_mean_ms",
        "llm_call_setup_mean_ms",
        "rag_total_minus_direct_p50_ms",
        "retriever_search_p50_ms",
    )
    out: dict[str, Any] = {
        k: statistics.median(r[k] for r in kept) if all(r[k] is not None for r in kept) else None
        for k in keys
    }
    out["until_llm_called_p50_ms"] = {
        k: statistics.median(r["until_llm_called"][k]["p50_ms"] for r in kept)
        for k in ("rag", "pass", "direct")
    }
    out["whole_request_p50_ms"] = {
        k: statistics.median(r["whole_request"][k]["p50_ms"] for r in kept)
        for k in ("search", "rag", "pass", "direct")
    }
    buckets: dict[str, int] = {}
    for r in kept:
        for k, v in r["rag_prep_histogram"]["buckets"].items():
            buckets[k] = buckets.get(k, 0) + v
    out["histogram_buckets"] = buckets
    out["clean"] = clean
    out["questions"] = len(QUESTIONS)
    out["warmup_retriever_hits_per_search"] = warm["hits_per_search"]
    out["runs"] = kept
    out["disturbed_runs"] = disturbed if clean else []  # discarded
    return out


# ---------------------------------------------------------------------------------------------------
# Optional: the gateway under cProfile
# ---------------------------------------------------------------------------------------------------


def profiled_gateway(out: str) -> None:
    """Runs in the gateway's process: ``python -m omnirag.gateway`` with cProfile switched on by SIGUSR1
    and off by SIGUSR2 (which writes ``out``), so start-up and warm-up stay out of the profile."""
    import cProfile

    from omnirag.gateway.__main__ import main as gateway_main

    profiles: list[cProfile.Profile] = []

    def begin(*_: object) -> None:
        profiles.append(cProfile.Profile())
        profiles[-1].enable()

    def end(*_: object) -> None:
        profiles[-1].disable()
        path = f"{out}.{len(profiles)}"
        profiles[-1].dump_stats(path + ".part")
        os.replace(path + ".part", path)  # the bench waits for this name

    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
    gateway_main()


def profile_top(path: Path, calls: int, n: int = 25, key: str = "own_us_per_request") -> list[dict[str, Any]]:
    """The functions with the most own (or cumulative) time, in µs per request."""
    stats = pstats.Stats(str(path))
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{'/'.join(Path(file).parts[-2:])}:{line}({func})",
                "calls_per_request": round(ncalls / calls, 2),
                "own_us_per_request": round(tottime / calls * 1e6, 1),
                "cumulative_us_per_request": round(cumtime / calls * 1e6, 1),
            }
        )
    rows.sort(key=lambda r: -r[key])
    return rows[:n]


def profile_gateway(
    env: dict[str, str], log_dir: Path, args: argparse.Namespace, rag: bool
) -> dict[str, Any]:
    """A second gateway, under cProfile only while the measured requests run: non-streaming
    pass-through at 1 client and at the most clients, streaming at the most clients, then RAG at
    1 client."""
    prefix = log_dir / "gateway.prof"
    gw = start(lambda p: gateway_spec(p, env | {"GATEWAY_PORT": str(p)}, prefix), log_dir, args.start_timeout)
    pid = gw.proc.pid  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    most = max(args.levels)
    phases = [(f"passthrough_c{c}", False, c, False) for c in sorted({1, most})]
    phases.append((f"stream_c{most}", False, most, True))
    if rag:
        phases.append(("rag_c1", True, 1, False))
    try:
        for number, (kind, is_rag, clients, stream) in enumerate(phases, start=1):
            n = args.rag_requests if is_rag else args.requests
            qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
            session = "bench-profile" if is_rag else None
            reqs = [
                post(
                    gw.port,
                    "/v1/chat/completions",
                    chat_body(q, stream=stream, rag=is_rag, session_id=session),
                )
                for q in qs
            ]
            warm = run_async(
                drive(gw.port, reqs[: len(QUESTIONS) * 2], clients, args.timeout, answered(stream))
            )
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)  # the handler runs on the gateway's event loop thread
            _, lat, errors, first = run_async(drive(gw.port, reqs, clients, args.timeout, answered(stream)))
            os.kill(pid, signal.SIGUSR2)
            path = Path(f"{prefix}.{number}")
            deadline = time.monotonic() + 30
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if errors or warm[2]:
                raise BenchError(f"profiled {kind} failed: {first or warm[3]}")
            lat.sort()
            out[kind] = {
                "clients": clients,
                "requests": n,
                "p50_ms_under_profiler": percentile(lat, 0.5) * 1000,
                "top_own_time": profile_top(path, n),
                "top_cumulative": profile_top(path, n, key="cumulative_us_per_request"),
            }
    finally:
        gw.stop()
    return out


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render(report: dict[str, Any]) -> str:
    pt = report["passthrough"]
    lines = [
        f"gateway bench: median of {report['settings']['repeats']} runs, {report['settings']['requests']} "
        f"requests per pass-through run; {report['machine']['cpu_count']} cpus",
        "",
        "pass-through (ms)  clients  direct p50    p99  gateway p50    p99  overhead p50    p99  "
        "gw req/s  gw cores  gw CPU us/req",
    ]
    lines.append("-" * len(lines[-1]))
    for lvl in pt.values():
        d, g = lvl["direct"], lvl["gateway"]
        cells = [
            f"{'stream' if lvl['stream'] else 'json':17} {lvl['clients']:>7}",
            f"{d['p50_ms']:11.2f} {d['p99_ms']:6.2f} {g['p50_ms']:12.2f} {g['p99_ms']:6.2f}",
            f"{lvl['overhead_p50_ms']:13.2f} {lvl['overhead_p99_ms']:6.2f} {g['rps']:9.0f}",
            f"{g['server_cores'].get('gateway', math.nan):9.2f}",
            f"{g['server_cpu_us_per_request'].get('gateway', math.nan):14.0f}",
        ]
        lines.append(" ".join(cells) + ("" if lvl["clean"] else "  (disturbed)"))
    rag = report.get("rag")
    if rag:
        u, w = rag["until_llm_called_p50_ms"], rag["whole_request_p50_ms"]
        lines += [
            "",
            f"RAG, 1 client, {report['settings']['rag_requests']} questions per run "
            f"({rag['questions']} standalone questions, hybrid k={RAG_TOP_K})"
            + ("" if rag["clean"] else " (disturbed)"),
            f"  request sent -> LLM has it, p50: RAG {u['rag']:.2f} ms, pass-through {u['pass']:.2f} ms, "
            f"direct {u['direct']:.2f} ms",
            f"  rag_prep p50 = {rag['rag_prep_p50_ms']:.2f} ms (p99 {rag['rag_prep_p99_ms']:.2f}; median "
            f"of per-question differences {rag['rag_prep_median_of_differences_ms']:.2f})",
            f"  means: outside {_num(rag['rag_prep_mean_ms'], '.2f')} ms = gateway's histogram "
            f"{_num(rag['histogram_mean_ms'], '.2f')} + LLM call setup "
            f"{_num(rag['llm_call_setup_mean_ms'], '.2f')}",
            f"  histogram buckets: {rag['histogram_buckets']}",
            f"  retriever search alone p50 {rag['retriever_search_p50_ms']:.2f} ms -> rag_prep / search = "
            f"{_num(report['ratios'].get('rag_prep_vs_retriever_search'), '.2f')}",
            f"  whole request p50: RAG {w['rag']:.2f} ms, direct upstream {w['direct']:.2f} ms -> "
            f"RAG - direct {rag['rag_total_minus_direct_p50_ms']:.2f} ms",
        ]
    for kind, prof in (report.get("profile") or {}).items():
        lines.append(f"\ncProfile, gateway, {kind}: us per request (own / cumulative / calls)")
        for r in prof["top_own_time"][:15]:
            lines.append(
                f"  {r['own_us_per_request']:8.1f} {r['cumulative_us_per_request']:9.1f} "
                f"{r['calls_per_request']:6.1f}  {r['function']}"
            )
    lines.append("")
    for key, target in TARGETS.items():
        value = report.get(key)
        verdict = "-" if value is None else ("ok" if value <= target else "MISSED")
        ratio = _num(report["ratios"].get(f"{key}_vs_target"), ".2f")
        lines.append(f"{key} = {_num(value, '.2f')} (target <= {target}; x{ratio} of it) {verdict}")
    load = report["machine"]
    lines.append(
        f"load: {load['loadavg_at_start']} at start, {load['loadavg_at_end']} at end; quiet waits "
        f"{load['quiet_wait_total_s']:.0f}s; disturbed runs discarded {load['disturbed_runs']}"
    )
    return "\n".join(lines)


def versions() -> dict[str, Any]:
    packages = (
        "omnirag-gateway",
        "omnirag-core",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "httpx",
        "httpcore",
        "anyio",
        "openai",
        "langchain-openai",
        "langchain-core",
        "redis",
        "orjson",
        "pydantic",
    )
    out: dict[str, Any] = {"python": platform.python_version(), **package_versions(sys.executable, packages)}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["redis-server"] = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return out


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--levels", default="1,32", help="concurrent clients, comma separated (default 1,32)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    ap.add_argument("--requests", type=int, default=800, help="requests per pass-through run")
    ap.add_argument("--rag-requests", type=int, default=200, help="questions per RAG run")
    ap.add_argument("--skip-rag", action="store_true", help="measure only the pass-through")
    ap.add_argument("--profile", action="store_true", help="also run the gateway under cProfile")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take")
    ap.add_argument(
        "--start-timeout", type=float, default=180.0, help="seconds a server may take to be ready"
    )
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds the measurements should take")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each run, wait up to this many seconds for other processes to go quiet "
        f"(< {QUIET_CORES} cores busy); 0 = do not wait",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    ap.add_argument("--upstream-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--profiled-gateway", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.upstream_worker is None and args.profiled_gateway is None:
        try:
            args.levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
        except ValueError:
            ap.error("--levels takes integers, e.g. 1,32")
        if not args.levels or min(args.levels) < 1 or args.repeats < 1 or args.requests < 100:
            ap.error("need levels >= 1, --repeats >= 1 and --requests >= 100")
    return args


def check_questions() -> None:
    from omnirag.gateway.rag import needs_rewrite

    history = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    leaning = [q for q in QUESTIONS if needs_rewrite(q, history)]
    if leaning:
        raise BenchError(f"these questions would be rewritten: {leaning}")


@contextlib.contextmanager
def stopping(servers: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for s in reversed(servers):
            with contextlib.suppress(Exception):
                s.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upstream_worker is not None:
        serve_upstream(args.upstream_worker)
        return 0
    if args.profiled_gateway is not None:
        profiled_gateway(args.profiled_gateway)
        return 0
    # SIGTERM (e.g. from make or CI) unwinds like Ctrl-C, so the finally blocks stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    check_questions()
    clock = Clock(args.deadline, args.quiet_wait)
    loadavg_start = os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "gateway",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.executable).name, *sys.argv],
        "targets": TARGETS,
        "overhead_p50_ms": None,
        "overhead_p99_ms": None,
        "rag_prep_p50_ms": None,
        "pass": None,
        "ratios": {},
    }
    servers: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="omnirag-bench-gateway-"))
    try:
        with stopping(servers):
            print(
                f"gateway bench: levels {args.levels}, repeats {args.repeats}, {args.requests} requests/run",
                flush=True,
            )
            redis = RedisProcess(tmp)
            servers.append(redis)
            redis.start()
            upstream = start(upstream_spec, tmp, args.start_timeout)
            servers.append(upstream)
            emb_port, ret_port = free_port(), free_port()
            embedder_url, retriever_url = f"http://127.0.0.1:{emb_port}", f"http://127.0.0.1:{ret_port}"
            env_holder: dict[str, dict[str, str]] = {}

            def make_gateway(port: int) -> ServerSpec:
                env_holder["env"] = gateway_env(port, redis.url, upstream.port, embedder_url, retriever_url)
                return gateway_spec(port, env_holder["env"])

            gateway = start(make_gateway, tmp, args.start_timeout)
            servers.append(gateway)
            pids = {"gateway": gateway.proc.pid, "upstream": upstream.proc.pid, "redis": redis.proc.pid}  # type: ignore[union-attr]

            print("pass-through (the embedder and retriever are not running yet)", flush=True)
            report["passthrough"] = {}
            for clients in args.levels:
                for stream in (False, True):
                    lvl = passthrough_level(gateway, upstream, pids, clients, stream, args, clock)
                    mode = "stream" if stream else "json"
                    report["passthrough"][f"{mode}_c{clients}"] = lvl
                    print(
                        f"  {mode:6} c={clients:<3} direct p50 {lvl['direct']['p50_ms']:6.2f} "
                        f"p99 {lvl['direct']['p99_ms']:6.2f} | gateway p50 {lvl['gateway']['p50_ms']:6.2f} "
                        f"p99 {lvl['gateway']['p99_ms']:6.2f} | overhead p50 {lvl['overhead_p50_ms']:6.2f} "
                        f"p99 {lvl['overhead_p99_ms']:6.2f} ms{'' if lvl['clean'] else ' (disturbed)'}",
                        flush=True,
                    )

            if not args.skip_rag:
                print("RAG: embedder, index, retriever", flush=True)
                embedder = start(embedder_spec, tmp, args.start_timeout, emb_port)
                servers.append(embedder)
                report["index"] = index_docs(tmp / "index", embedder_url, args.start_timeout)
                retriever = start(
                    lambda p: retriever_spec(p, tmp / "index", embedder_url),
                    tmp,
                    args.start_timeout,
                    ret_port,
                )
                servers.append(retriever)
                stack = {"gateway": gateway, "upstream": upstream, "retriever": retriever}
                rag_pids = pids | {"embedder": embedder.proc.pid, "retriever": retriever.proc.pid}  # type: ignore[union-attr]
                report["rag"] = bench_rag(stack, rag_pids, args, clock)
                print(
                    f"  rag_prep p50 {report['rag']['rag_prep_p50_ms']:.2f} ms, retriever search p50 "
                    f"{report['rag']['retriever_search_p50_ms']:.2f} ms",
                    flush=True,
                )
                if args.profile:
                    print("cProfile phase", flush=True)
                    report["profile"] = profile_gateway(env_holder["env"], tmp, args, rag=True)
            elif args.profile:
                report["profile"] = profile_gateway(env_holder["env"], tmp, args, rag=False)
            report["gateway_env"] = {
                k: ("***" if k == "GATEWAY_DEV_KEY" else v)
                for k, v in sorted(env_holder["env"].items())
                if k.startswith("GATEWAY_")
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    json_levels = [lvl for lvl in report["passthrough"].values() if not lvl["stream"]]
    report["overhead_p50_ms"] = max(lvl["overhead_p50_ms"] for lvl in json_levels)
    report["overhead_p99_ms"] = max(lvl["overhead_p99_ms"] for lvl in json_levels)
    if report.get("rag"):
        report["rag_prep_p50_ms"] = report["rag"]["rag_prep_p50_ms"]
        report["ratios"]["rag_prep_vs_retriever_search"] = (
            report["rag"]["rag_prep_p50_ms"] / report["rag"]["retriever_search_p50_ms"]
        )
    for key, target in TARGETS.items():
        if report.get(key) is not None:
            report["ratios"][f"{key}_vs_target"] = report[key] / target
    report["pass"] = {k: report[k] <= t for k, t in TARGETS.items() if report.get(k) is not None}
    all_runs = [p for lvl in report["passthrough"].values() for p in lvl["pairs"] + lvl["disturbed_pairs"]]
    all_runs += (report.get("rag") or {}).get("runs", []) + (report.get("rag") or {}).get(
        "disturbed_runs", []
    )
    report["machine"] = {
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "loadavg_at_start": [round(x, 2) for x in loadavg_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "quiet_wait_total_s": round(clock.waited, 1),
        "quiet_cores": QUIET_CORES,
        "other_cores_per_run": [round(r["other_cores"], 3) for r in all_runs],
        "disturbed_runs": sum(len(lvl["disturbed_pairs"]) for lvl in report["passthrough"].values())
        + len((report.get("rag") or {}).get("disturbed_runs", [])),
        "all_clean": all(lvl["clean"] for lvl in report["passthrough"].values())
        and (report.get("rag") or {}).get("clean", True),
    }
    report["versions"] = versions()
    report["settings"] = {
        "levels": args.levels,
        "repeats": args.repeats,
        "requests": args.requests,
        "rag_requests": args.rag_requests,
        "timeout_s": args.timeout,
        "quiet_wait_s": args.quiet_wait,
        "deadline_s": args.deadline,
        "max_tokens": MAX_TOKENS,
        "upstream": "raw asyncio HTTP/1.1 on uvloop, fixed completion, in its own process",
        "client": "hand-rolled keep-alive HTTP/1.1 on uvloop (bench/embedder.py's Connection)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(render(report))
    print(f"\nwrote {args.out}")
    errors = sum(lvl["errors"] for lvl in report["passthrough"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
