"""Answer quality through the gateway of the real local stack: does the reply contain the gold answer,
is it grounded, is it a fallback, how long did it take; and for follow-ups, was the right thing searched.

The stack is the one ``make run`` starts, each part its own process on a free port (bench/gateway.py's
helpers): Redis, the embedder, the example knowledge base indexed by ``python -m omnirag.indexer run``,
the CMRC 2018 trial passages indexed by the same CLI into a collection of their own (``cmrc``, one
text file per paragraph), the retriever over both, llama.cpp serving SmolLM2-135M-Instruct with the
threads ``make run`` gives it, and the gateway with the local stack's model list. Questions go through
``POST /v1/chat/completions`` (not streamed), once per answer mode (the ``answer_mode`` body field:
generate, extract, auto), the modes taking turns on each question so that a burst of load from other
processes slows every mode alike.

Sets (bench/data/, each gold answer a list of acceptable strings):

- ``en``: 30 English questions over the example knowledge base (answers_en.json).
- ``cmrc``: a seeded sample (``--sample``, 60) of the CMRC 2018 trial questions; gold = the dataset's
  answers. The file is the one ``make eval`` reads (``DEFAULT_CMRC`` of bench/eval_retrieval.py).
- ``followups_en`` / ``followups_zh``: 15 + 15 two-turn conversations (conversations.json) in one
  gateway session each; the follow-up's reply is scored, and its search: the query the gateway really
  sent (``omnirag.rewritten_query``, else the question) and the hand-written standalone question are
  both searched on the retriever directly (hybrid, the gateway's top_k), and the follow-up is
  "searched right" when both put the same chunk first (with whole-paragraph chunks in ``cmrc``, the
  same paragraph). ``omnirag.rewrite`` says which rewrite was used.

Per set and mode: share of replies containing a gold answer (normalised: NFKC, so full- and half-width
forms compare equal, case-folded, whitespace removed), share with ``omnirag.grounded`` true, share
with ``omnirag.fallback`` true, share grounded or fallback, median and p90 latency. A gateway that does
not know ``answer_mode`` yet (no ``omnirag.answer_mode`` in its reply) answers every mode as generate:
such modes are dropped at their first reply and reported as unsupported.

Targets (issue 15, embedded model on 2 cores): follow-ups searched right >= 80%; ``auto`` contains
the gold answer in >= 60% of the Chinese (cmrc) and >= 80% of the English (en) questions; every
``auto`` reply grounded or marked fallback; median ``auto`` reply under 10 s.

    .venv/bin/python bench/eval_answers.py [--modes generate,extract,auto] [--limit N] [--out FILE]

``--limit N`` keeps the first N items of each set (a quick run). Results, with every reply, go to
bench/results/answers.json. GATEWAY_* variables in the environment reach the gateway (and are
recorded), except those the eval sets. Not part of ``make test``: ``make eval-answers``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench/data"
EN_FILE = DATA / "answers_en.json"
CONVERSATIONS_FILE = DATA / "conversations.json"
# The file `make eval` (bench/eval_retrieval.py) reads.
DEFAULT_CMRC = REPO / "bench/data/cmrc2018/cmrc2018_trial.json"
DEFAULT_OUT = REPO / "bench/results/answers.json"
MODES = ("generate", "extract", "auto")
DOCS = "docs"
CMRC = "cmrc"
SEED = 15
SAMPLE = 60
TOP_K = 4  # the gateway's default top_k (GATEWAY_DEFAULT_TOP_K): the direct searches use the same
# CMRC paragraphs are at most 968 characters: one chunk each, so a chunk is a paragraph.
CMRC_SPLITTER = {"chunkSize": 1000, "chunkOverlap": 0}
EVAL_KEY = "eval-answers-key-0123456789abcdef"  # GATEWAY_DEV_KEY: 24+ characters
# Each met by ``auto`` (issue 15); the other modes' values are shown beside it. gold_zh: the cmrc set,
# gold_en: the en set; grounded_or_fallback and median_s over every reply of the mode.
TARGETS = {
    "followups_searched_right": 0.80,  # >=
    "gold_zh": 0.60,  # >=
    "gold_en": 0.80,  # >=
    "grounded_or_fallback": 1.0,  # >=
    "median_s": 10.0,  # <
}
SETS = ("en", "cmrc", "followups_en", "followups_zh")
REPLY_CHARS = 2000  # of each reply kept in the JSON


# ---------------------------------------------------------------------------------------------------
# Data and scoring (stdlib only: tests/bench imports these)
# ---------------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """NFKC (full-width letters, digits and punctuation become their half-width forms), case-folded,
    every whitespace removed: "８０００", "8 000" and "8000" compare equal, as do "Make Run" and
    "make run"."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).casefold())


def contains_gold(reply: str, gold: Sequence[str]) -> bool:
    """Whether the reply contains any of the acceptable answers, both normalised."""
    text = normalise(reply)
    return any(g and normalise(g) in text for g in gold)


@dataclass
class Item:
    """One question to ask (or one conversation: ``first`` then ``question`` in one session)."""

    set: str
    id: str
    collection: str
    question: str
    gold: list[str]
    first: str | None = None
    standalone: str | None = None
    passage: str | None = None  # cmrc paragraph id (the document the answer is in)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_english(path: Path = EN_FILE) -> list[Item]:
    data = load_json(path)
    return [
        Item("en", q["id"], data["collection"], q["question"], list(q["gold"])) for q in data["questions"]
    ]


def load_conversations(path: Path = CONVERSATIONS_FILE) -> list[Item]:
    items = []
    for c in load_json(path)["conversations"]:
        zh = c["lang"] == "zh"
        items.append(
            Item(
                "followups_zh" if zh else "followups_en",
                c["id"],
                CMRC if zh else DOCS,
                c["followup"],
                list(c["gold"]),
                first=c["first"],
                standalone=c["standalone"],
                passage=c.get("passage"),
            )
        )
    return items


def cmrc_paragraphs(path: Path) -> dict[str, dict[str, Any]]:
    """Paragraph id -> {"title", "context", "qas"} of the CMRC file (SQuAD format)."""
    out = {}
    for article in load_json(path)["data"]:
        for para in article["paragraphs"]:
            out[para["id"]] = {
                "title": article.get("title") or "",
                "context": para["context"],
                "qas": para["qas"],
            }
    return out


def cmrc_sample(paragraphs: dict[str, dict[str, Any]], n: int, seed: int) -> list[Item]:
    """A fixed sample of the non-empty questions (the trial split has a couple of blank ones)."""
    pool = [
        Item(
            "cmrc",
            qa["id"],
            CMRC,
            qa["question"].strip(),
            sorted({a["text"] for a in qa["answers"]}),
            passage=pid,
        )
        for pid, para in paragraphs.items()
        for qa in para["qas"]
        if qa["question"].strip() and qa["answers"]
    ]
    pool.sort(key=lambda i: i.id)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: a latency some reply really had."""
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)] if v else None


# ---------------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------------


def bench_helpers() -> Any:
    """bench/gateway.py (servers on free ports, the indexer run, Redis), imported on first use."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gateway as helpers  # bench/gateway.py

    return helpers


def local_models() -> list[dict[str, Any]]:
    """The chat models make run gives the gateway (scripts/local_stack.py's LOCAL_MODELS): the
    eval measures that configuration, not the gateway's bare defaults."""
    sys.path.insert(0, str(REPO / "scripts"))
    import local_stack  # scripts/local_stack.py

    models: list[dict[str, Any]] = local_stack.LOCAL_MODELS
    return models


def index_cmrc(
    helpers: Any,
    paragraphs: dict[str, dict[str, Any]],
    work: Path,
    index_root: Path,
    embedder_url: str,
    timeout: float,
) -> dict[str, Any]:
    """The CMRC paragraphs as a knowledge base of their own, indexed by the indexer's CLI as any
    knowledge base is: one text file per paragraph (named by its id), one chunk per file."""
    folder = work / "cmrc-passages"
    folder.mkdir()
    for pid, para in paragraphs.items():
        (folder / f"{pid}.txt").write_text(para["context"], encoding="utf-8")
    spec = work / "cmrc-kb.json"  # JSON is YAML: the indexer's spec loader reads it
    spec.write_text(
        json.dumps(
            {
                "knowledgeBases": [
                    {
                        "name": CMRC,
                        "description": "CMRC 2018 trial paragraphs (bench/eval_answers.py).",
                        "sources": [{"type": "local", "path": str(folder), "glob": "*.txt"}],
                        "splitter": CMRC_SPLITTER,
                    }
                ]
            }
        )
    )
    indexed: dict[str, Any] = helpers.index_docs(index_root, embedder_url, timeout, spec=spec)
    return indexed | {"seconds": round(indexed["seconds"], 1)}


@dataclass
class Stack:
    gateway: str
    retriever: str
    llm: str
    indexing: dict[str, Any]
    gateway_env: dict[str, str]


@contextlib.contextmanager
def local_stack(args: argparse.Namespace, paragraphs: dict[str, dict[str, Any]]) -> Iterator[Stack]:
    helpers = bench_helpers()
    from omnirag_harness.processes import SERVICES, RedisProcess
    from omnirag_harness.servers import llm_server

    with tempfile.TemporaryDirectory(prefix="omnirag-eval-answers-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        (work / "redis").mkdir()
        logs = work / "logs"
        logs.mkdir()
        index_root = work / "index"
        print(
            "starting redis, the embedder, the indexer runs, the retriever, the LLM, the gateway", flush=True
        )
        redis = RedisProcess(work / "redis")
        stack.callback(redis.stop)
        redis.start()
        embedder = helpers.start(helpers.embedder_spec, logs, args.start_timeout)
        stack.callback(embedder.stop)
        embedder_url = embedder.url("")
        indexing = {
            DOCS: helpers.index_docs(index_root, embedder_url, args.start_timeout),
            CMRC: index_cmrc(helpers, paragraphs, work, index_root, embedder_url, args.start_timeout),
        }
        retriever = helpers.start(
            lambda p: helpers.retriever_spec(p, index_root, embedder_url), logs, args.start_timeout
        )
        stack.callback(retriever.stop)
        # What make run's Procfile runs: scripts/llm_server.py, the threads its cores allow.
        llm = stack.enter_context(llm_server(timeout=args.start_timeout))
        model = "smollm2-135m-instruct"
        passed = {k: v for k, v in os.environ.items() if k.startswith("GATEWAY_")}
        env = helpers.base_env() | {
            "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_EMBEDDER_URL": embedder_url,
            "GATEWAY_RETRIEVER_URL": retriever.url(""),
            # make run's model list (scripts/local_stack.py: its cap, repeat penalty, window and
            # languages), at this LLM's address.
            "GATEWAY_MODELS": json.dumps([m | {"base_url": llm} for m in local_models()]),
            "GATEWAY_DEFAULT_MODEL": model,
            "GATEWAY_DEV_KEY": EVAL_KEY,
            "GATEWAY_DEFAULT_RPM": "0",
            "GATEWAY_DEFAULT_TPM": "0",
        }
        gateway = helpers.start(
            lambda p: helpers.gateway_spec(p, env | SERVICES["gateway"].address_env(p)),
            logs,
            args.start_timeout,
        )
        stack.callback(gateway.stop)
        env |= SERVICES["gateway"].address_env(gateway.port)  # what it ran with
        recorded = {k: v for k, v in passed.items() if k not in env or env[k] == v}
        try:
            yield Stack(gateway.url(""), retriever.url(""), llm, indexing, recorded)
        except BaseException:
            for name in ("gateway", "retriever", "embedder"):
                with contextlib.suppress(OSError):
                    tail = (logs / f"{name}.log").read_text(errors="replace")[-1500:]
                    print(f"--- {name} log (end) ---\n{tail}", file=sys.stderr)
            raise


# ---------------------------------------------------------------------------------------------------
# Asking
# ---------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    set: str
    id: str
    mode: str
    question: str
    gold: list[str]
    seconds: float | None = None
    status: int | None = None
    error: str | None = None
    text: str = ""
    has_gold: bool = False
    answer_mode: str | None = None
    answered_by: str | None = None
    grounded: bool | None = None
    grounding_reason: str | None = None
    fallback: bool | None = None
    quote: Any = None
    rewrite: str | None = None
    rewritten_query: str | None = None
    citations: list[str] = field(default_factory=list)  # the cited chunks' ids, in order
    finish_reason: str | None = None  # "length": the answer ran into its token cap
    completion_tokens: int | None = None
    first_seconds: float | None = None  # the first turn of a conversation
    searched: str | None = None  # what the gateway searched for the follow-up
    searched_first: str | None = None  # first chunk the retriever returns for it
    standalone_first: str | None = None  # first chunk for the hand-written standalone question
    searched_right: bool | None = None
    same_first_source: bool | None = None


class Client:
    def __init__(self, stack: Stack, timeout: float) -> None:
        import httpx

        self.stack = stack
        self.http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {EVAL_KEY}"})
        self.search_cache: dict[tuple[str, str], tuple[str | None, str | None]] = {}

    def chat(self, question: str, collection: str, mode: str, session: str | None) -> tuple[int, Any, float]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": question}],
            "collection": collection,
            "answer_mode": mode,
        }
        if session:
            body["session_id"] = session
        t0 = time.perf_counter()
        r = self.http.post(f"{self.stack.gateway}/v1/chat/completions", json=body)
        seconds = time.perf_counter() - t0
        try:
            payload = r.json()
        except ValueError:
            payload = {"error": {"message": r.text[:500]}}
        return r.status_code, payload, seconds

    def first_hit(self, collection: str, query: str) -> tuple[str | None, str | None]:
        """(chunk id, source) the retriever puts first, searched as the gateway searches."""
        key = (collection, query)
        if key not in self.search_cache:
            r = self.http.post(
                f"{self.stack.retriever}/v1/collections/{collection}/search",
                json={"query": query, "k": TOP_K, "mode": "hybrid"},
            )
            r.raise_for_status()
            hits = r.json()["hits"]
            self.search_cache[key] = (
                (str(hits[0]["id"]), str((hits[0].get("metadata") or {}).get("source", "")))
                if hits
                else (None, None)
            )
        return self.search_cache[key]


def fill(reply: Reply, status: int, payload: Any, seconds: float) -> None:
    reply.status, reply.seconds = status, seconds
    if status != 200:
        reply.error = json.dumps(payload.get("error", payload), ensure_ascii=False)[:500]
        return
    choice = (payload.get("choices") or [{}])[0]
    reply.text = (choice.get("message") or {}).get("content") or ""
    reply.finish_reason = choice.get("finish_reason")
    reply.completion_tokens = (payload.get("usage") or {}).get("completion_tokens")
    reply.has_gold = contains_gold(reply.text, reply.gold)
    o = payload.get("omnirag") or {}
    reply.answer_mode = o.get("answer_mode")
    reply.answered_by = o.get("answered_by")
    reply.grounded = o.get("grounded")
    reply.grounding_reason = o.get("grounding_reason")
    reply.fallback = o.get("fallback")
    reply.quote = o.get("quote")
    reply.rewrite = o.get("rewrite")
    reply.rewritten_query = o.get("rewritten_query")
    reply.citations = [str(c.get("id")) for c in o.get("citations") or []]
    reply.text = reply.text[:REPLY_CHARS]


def ask(client: Client, item: Item, mode: str, run_id: str) -> Reply:
    """One question (a conversation: both turns) in one mode; a failed request is recorded, not raised."""
    import httpx

    try:
        return _ask(client, item, mode, run_id)
    except httpx.HTTPError as exc:
        return Reply(item.set, item.id, mode, item.question, item.gold, error=f"{type(exc).__name__}: {exc}")


def _ask(client: Client, item: Item, mode: str, run_id: str) -> Reply:
    reply = Reply(item.set, item.id, mode, item.question, item.gold)
    session = None
    if item.first is not None:
        session = f"eval-{run_id}-{item.id}-{mode}"
        status, payload, seconds = client.chat(item.first, item.collection, mode, session)
        reply.first_seconds = seconds
        if status != 200:
            reply.status, reply.seconds = status, seconds
            reply.error = "first turn: " + json.dumps(payload.get("error", payload), ensure_ascii=False)[:500]
            return reply
    fill(reply, *client.chat(item.question, item.collection, mode, session))
    if item.standalone is not None and reply.status == 200:
        reply.searched = reply.rewritten_query or item.question
        got_id, got_source = client.first_hit(item.collection, reply.searched)
        want_id, want_source = client.first_hit(item.collection, item.standalone)
        reply.searched_first, reply.standalone_first = got_id, want_id
        reply.searched_right = want_id is not None and got_id == want_id
        reply.same_first_source = want_source is not None and got_source == want_source
    return reply


# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------


def share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def summarise(replies: Sequence[Reply]) -> dict[str, Any]:
    ok = [r for r in replies if r.status == 200]
    secs = [r.seconds for r in ok if r.seconds is not None]
    out: dict[str, Any] = {
        "n": len(replies),
        "errors": len(replies) - len(ok),
        "gold": share([r.has_gold for r in ok]),
        "grounded": share([r.grounded is True for r in ok]),
        "grounded_unchecked": share([r.grounded is None for r in ok]),
        "fallback": share([r.fallback is True for r in ok]),
        "grounded_or_fallback": share([r.grounded is True or r.fallback is True for r in ok]),
        "median_s": round(statistics.median(secs), 2) if secs else None,
        "p90_s": round(p, 2) if (p := percentile(secs, 0.9)) is not None else None,
        "answered_by": dict(Counter(str(r.answered_by) for r in ok)),
        "hit_token_cap": share([r.finish_reason == "length" for r in ok]),
    }
    follow = [r for r in ok if r.searched_right is not None]
    if follow:
        out["searched_right"] = share([bool(r.searched_right) for r in follow])
        out["same_first_source"] = share([bool(r.same_first_source) for r in follow])
        out["rewrite"] = dict(Counter(str(r.rewrite) for r in follow))
        out["rewritten"] = share([r.rewritten_query is not None for r in follow])
    return out


def targets(by_mode: dict[str, dict[str, Any]], replies: Sequence[Reply]) -> dict[str, Any]:
    """Each target's value per mode (the target itself is on ``auto``; the other modes show where
    they stand), and whether ``auto`` meets it."""
    out: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in replies if r.mode == mode and r.status == 200]
        if not mine:
            continue
        follow = [r for r in mine if r.searched_right is not None]
        secs = [r.seconds for r in mine if r.seconds is not None]
        values = {
            "followups_searched_right": share([bool(r.searched_right) for r in follow]),
            "gold_zh": by_mode.get(mode, {}).get("cmrc", {}).get("gold"),
            "gold_en": by_mode.get(mode, {}).get("en", {}).get("gold"),
            "grounded_or_fallback": share([r.grounded is True or r.fallback is True for r in mine]),
            "median_s": round(statistics.median(secs), 2) if secs else None,
        }
        rows = {}
        for name, target in TARGETS.items():
            v = values[name]
            if v is None:
                rows[name] = {"value": None, "target": target, "ratio": None, "met": None}
                continue
            less = name == "median_s"
            ratio = (target / v if v else math.inf) if less else v / target
            rows[name] = {
                "value": v,
                "target": target,
                "ratio": round(ratio, 3),
                "met": v < target if less else v >= target,
            }
        out[mode] = rows
    return out


def render(result: dict[str, Any]) -> str:
    head = (
        f"{'set':<14}{'mode':<10}{'n':>4}{'err':>4}{'gold':>7}{'grnd':>7}{'fallb':>7}{'g|f':>7}"
        f"{'med s':>8}{'p90 s':>8}{'search':>8}  rewrite"
    )
    lines = [head, "-" * len(head)]

    def pct(x: float | None) -> str:
        return f"{x * 100:6.0f}%" if x is not None else f"{'-':>7}"

    def sec(x: float | None) -> str:
        return f"{x:8.1f}" if x is not None else f"{'-':>8}"

    for name in SETS:
        for mode, sets in result["sets"].items():
            s = sets.get(name)
            if not s:
                continue
            lines.append(
                f"{name:<14}{mode:<10}{s['n']:>4}{s['errors']:>4}{pct(s['gold'])}{pct(s['grounded'])}"
                f"{pct(s['fallback'])}{pct(s['grounded_or_fallback'])}{sec(s['median_s'])}{sec(s['p90_s'])}"
                f"{pct(s.get('searched_right'))}  {s.get('rewrite', '')}"
            )
    lines.append("")
    lines.append(f"{'target':<28}{'mode':<10}{'value':>8}{'target':>8}{'ratio':>8}  met")
    for mode, rows in result["targets"].items():
        for name, row in rows.items():
            v = "-" if row["value"] is None else f"{row['value']:.3g}"
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            op = "<" if name == "median_s" else ">="
            lines.append(
                f"{name:<28}{mode:<10}{v:>8}{op + format(row['target'], 'g'):>8}{ratio:>8}  {row['met']}"
            )
    if result["unsupported_modes"]:
        lines.append(
            "\nmodes the gateway ignored (no omnirag.answer_mode in its reply): "
            + ", ".join(result["unsupported_modes"])
        )
    return "\n".join(lines)


def environment(stack: Stack | None) -> dict[str, Any]:
    def git(*argv: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=20
            ).stdout.strip()
        return None

    env: dict[str, Any] = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": len((git("status", "--porcelain") or "").splitlines()),
        "model": "smollm2-135m-instruct (SmolLM2-135M-Instruct.Q4_1.gguf, llama-cpp-python server)",
        "llm_threads": os.environ.get("LLM_THREADS") or "usable cores (scripts/llm_server.py)",
    }
    if stack is not None:
        env["gateway_env"] = stack.gateway_env
    return env


# ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated answer modes")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each set (a quick run)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated sets: " + ", ".join(SETS))
    parser.add_argument("--sample", type=int, default=SAMPLE, help="CMRC questions in the seeded sample")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cmrc", type=Path, default=DEFAULT_CMRC, help="CMRC 2018 trial file (SQuAD format)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument(
        "--start-timeout", type=float, default=600.0, help="seconds per service start / indexing"
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if bad := [m for m in modes if m not in MODES] + [s for s in sets if s not in SETS]:
        parser.error(f"unknown modes or sets: {bad}")

    paragraphs = cmrc_paragraphs(args.cmrc)
    items_by_set: dict[str, list[Item]] = {
        "en": load_english(),
        "cmrc": cmrc_sample(paragraphs, args.sample, args.seed),
    }
    for item in load_conversations():
        items_by_set.setdefault(item.set, []).append(item)
    # Sets take turns (one item of each, then the next), so that a run cut short covers every set.
    chosen = [items_by_set[s][: args.limit] for s in sets]
    items = [i for group in itertools.zip_longest(*chosen) for i in group if i is not None]
    print(
        f"{len(items)} items x {len(modes)} modes: "
        + ", ".join(f"{s} {len(items_by_set[s][: args.limit])}" for s in sets)
    )

    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    replies: list[Reply] = []
    unsupported: list[str] = []
    settings = {
        "modes": modes,
        "sets": sets,
        "limit": args.limit,
        "cmrc_sample": args.sample,
        "seed": args.seed,
        "cmrc_file": str(args.cmrc),
        "top_k": TOP_K,
        "stream": False,
        "max_tokens": "the gateway's default (the request sets none)",
    }
    load_before = round(os.getloadavg()[0], 2)
    # A stop (timeout's SIGTERM, Ctrl-C) unwinds the stack: every server started is stopped.
    signal.signal(signal.SIGTERM, _stop)
    with local_stack(args, paragraphs) as stack:
        client = Client(stack, args.timeout)
        result = report(replies, unsupported, settings, environment(stack), stack, started, len(items))
        for n, item in enumerate(items, start=1):
            for mode in modes:
                if mode in unsupported:
                    continue
                reply = ask(client, item, mode, run_id)
                if mode != "generate" and reply.status == 200 and reply.answer_mode is None:
                    unsupported.append(mode)
                    print(f"  the gateway ignores answer_mode={mode}: dropped", flush=True)
                    continue
                replies.append(reply)
                print(
                    f"[{n}/{len(items)}] {item.set:<13} {item.id:<22} {mode:<8} "
                    f"{'-' if reply.seconds is None else f'{reply.seconds:5.1f}s'} "
                    f"gold={reply.has_gold!s:<5} "
                    f"grounded={reply.grounded!s:<5} fallback={reply.fallback!s:<5}"
                    + (f" searched_right={reply.searched_right}" if reply.searched_right is not None else "")
                    + (f" ERROR {reply.error}" if reply.error else ""),
                    flush=True,
                )
            # Written after every item: a run cut short still leaves what it measured.
            result = report(replies, unsupported, settings, environment(stack), stack, started, len(items))
            result["environment"]["load_average_1m_before"] = load_before
            write(args.out, result)
    print()
    print(render(result))
    print(f"\nwrote {args.out}")
    return 0


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def report(
    replies: Sequence[Reply],
    unsupported: list[str],
    settings: dict[str, Any],
    env: dict[str, Any],
    stack: Stack,
    started: float,
    planned: int,
) -> dict[str, Any]:
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in settings["modes"]:
        mine = [r for r in replies if r.mode == mode]
        if mine:
            by_mode[mode] = {
                s: summarise([r for r in mine if r.set == s])
                for s in settings["sets"]
                if any(r.set == s for r in mine)
            }
    return {
        "environment": env,
        "settings": settings,
        "items_planned": planned,
        "items_done": len({(r.set, r.id) for r in replies}),
        "unsupported_modes": unsupported,
        "sets": by_mode,
        "targets": targets(by_mode, replies),
        "seconds": round(time.perf_counter() - started, 1),
        "indexing_seconds": {k: v.get("seconds") for k, v in stack.indexing.items()},
        "replies": [asdict(r) for r in replies],
    }


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
