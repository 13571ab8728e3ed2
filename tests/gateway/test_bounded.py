"""Bounded generation and the checked rewrite.

An answer's token cap fits its question (a fact gets the model's ``answer_tokens``, an explanation
or a list a multiple), the model's repetition penalty rides in every answer call, and the prompt's
sources are budgeted in the model's own tokens, counted by its server. A follow-up's rewrite is
checked (it keeps the follow-up's words, names what "it" is, is a question in the user's language,
is not an answer) and replaced by a deterministic one when it fails.

Real where it can be: the local llama.cpp server with SmolLM2 (its answers, its tokenizer, its
prompt count), the embedder, the indexed example knowledge base and the retriever, each behind a
recording proxy so the test sees what the gateway really sent. The scripted upstream only drives a
rewrite the test must choose ("The answer to this question is:") and a vLLM-style model entry."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from omnirag_harness.gateway_stack import AUTH, GatewayFactory
from omnirag_harness.recording_proxy import RecordingProxy
from omnirag_harness.scripted_llm import Plain, ScriptedLLM, scripted_llm
from omnirag_harness.servers import metric_value
from pydantic import ValidationError

from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.rag import (
    answer_cap,
    answer_limits,
    answer_max_tokens,
    check_rewrite,
    fallback_rewrite,
    open_question,
)
from omnirag.gateway.registry import ModelSpec
from omnirag.gateway.tokens import TokenCounter, estimate, server_root

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = GatewaySettings(_env_file=None)


def local_models() -> list[dict[str, Any]]:
    """The model list ``make run`` writes into .env (scripts/local_stack.py)."""
    spec = importlib.util.spec_from_file_location("local_stack", REPO / "scripts/local_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [dict(m) for m in module.LOCAL_MODELS]


def local_entry(base_url: str, **override: Any) -> dict[str, Any]:
    return local_models()[0] | {"base_url": base_url} | override


def chat(base: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(base + "/v1/chat/completions", json=body, headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------- the answer's cap ----------


def test_the_local_stack_bounds_smollm2() -> None:
    """make run's entry: a window, a cap lower than the gateway's default, a repeat penalty."""
    spec = ModelSpec.model_validate(local_entry("http://127.0.0.1:6006/v1"))
    assert spec.context_tokens == 4096 and spec.sampling == {"repeat_penalty": 1.3}
    assert spec.answer_tokens is not None and spec.answer_tokens < DEFAULTS.answer_tokens


@pytest.mark.parametrize(
    ("question", "is_open"),
    [
        ("Which port does the gateway listen on?", False),
        ("How many replicas does the retriever run?", False),
        ("How do I run the tests?", True),
        ("Why is the index versioned?", True),
        ("List the services and their ports.", True),
        ("网关监听哪个端口？", False),
        ("如何运行测试？", True),
        ("为什么索引要分版本？", True),
    ],
)
def test_the_cap_fits_the_question(question: str, is_open: bool) -> None:
    """A fact gets the model's answer_tokens, an explanation / steps / a list the factor times it;
    the client's max_tokens caps it further; a reasoning model gets its budget on top."""
    spec = ModelSpec(name="m", base_url="http://x/v1", answer_tokens=100)
    assert open_question(question) is is_open
    want = 300 if is_open else 100
    assert answer_cap(spec, question, 1024, 256, 3.0) == want
    assert answer_cap(spec, question, 50, 256, 3.0) == 50
    default = ModelSpec(name="d", base_url="http://x/v1")
    assert answer_cap(default, question, 1024, 256, 3.0) == (768 if is_open else 256)
    r1 = ModelSpec(name="r1", base_url="http://x/v1", capabilities=("text", "reasoning"), answer_tokens=100)
    assert answer_max_tokens(r1, answer_cap(r1, question, 1024, 256, 3.0)) == want + r1.reasoning_budget


def test_sampling_rides_in_the_answer_call_and_cannot_replace_the_gateways_fields() -> None:
    spec = ModelSpec(name="v", base_url="http://x/v1", sampling={"repetition_penalty": 1.1, "top_p": 0.9})
    assert answer_limits(spec, 64) == {
        "extra_body": {"repetition_penalty": 1.1, "top_p": 0.9, "max_tokens": 64}
    }
    newer = spec.model_copy(update={"max_tokens_param": "max_completion_tokens"})
    assert answer_limits(newer, 64) == {
        "max_tokens": 64,
        "extra_body": {"repetition_penalty": 1.1, "top_p": 0.9},
    }
    for field in ("max_tokens", "messages", "temperature"):
        with pytest.raises(ValidationError, match=field):
            ModelSpec(name="v", base_url="http://x/v1", sampling={field: 1})


# ---------- counting tokens ----------


def counted_by_server(llm_url: str, text: str) -> int:
    """What the local server itself counts (llama-cpp-python's /extras/tokenize/count)."""
    r = httpx.post(server_root(llm_url) + "/extras/tokenize/count", json={"input": text}, timeout=30)
    r.raise_for_status()
    return int(r.json()["count"])


def test_the_estimate_is_an_upper_bound_of_the_real_count(llm_url: str) -> None:
    """Where the server cannot count, the estimate must not undercount, or the prompt overflows:
    checked against SmolLM2's own tokenizer on English, Chinese, digits, hashes and code."""
    texts = [
        (REPO / "examples/knowledge-base/architecture.md").read_text(encoding="utf-8"),
        (REPO / "examples/knowledge-base/faq.zh.md").read_text(encoding="utf-8"),
        (REPO / "README.md").read_text(encoding="utf-8")[:6000],
        (REPO / "services/gateway/src/omnirag/gateway/rag.py").read_text(encoding="utf-8")[:6000],
        "1234567890 " * 40,
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 " * 5,
        "北京是中华人民共和国的首都，也是全国的政治中心、文化中心。1949年10月1日成立。" * 4,
    ]
    for text in texts:
        real = counted_by_server(llm_url, text)
        assert real <= estimate(text) <= 3 * real, text[:60]


def test_tokens_are_counted_by_the_models_own_server_and_cached(llm_url: str) -> None:
    """The counter finds how the local server counts (llama-cpp-python's route), agrees with it,
    and asks once per text."""
    calls: list[str] = []

    async def run() -> tuple[TokenCounter, list[int], list[int]]:
        async def hook(request: httpx.Request) -> None:
            calls.append(request.url.path)

        async with httpx.AsyncClient(event_hooks={"request": [hook]}) as client:
            counter = TokenCounter(ModelSpec(name="smollm2", base_url=llm_url), client)
            texts = ["The gateway listens on port 8000.", "网关监听 8000 端口。", "x " * 300]
            first = await counter.count_many(texts)
            again = await counter.count_many(texts)
            return counter, first, again

    counter, first, again = asyncio.run(run())
    assert counter.dialect == "llama-cpp-python" and counter.exact
    texts = ["The gateway listens on port 8000.", "网关监听 8000 端口。", "x " * 300]
    assert first == again == [counted_by_server(llm_url, t) for t in texts]
    # Probing /tokenize (llama.cpp's, vLLM's) failed once; then one call per text, none again.
    assert calls.count("/extras/tokenize/count") == 3


def test_a_server_without_a_tokenizer_gets_estimates() -> None:
    """An OpenAI-compatible server with no tokenize route: estimates, and it is not asked again
    for each text."""
    with scripted_llm(Plain("x")) as url:

        async def run() -> tuple[TokenCounter, list[int]]:
            async with httpx.AsyncClient() as client:
                counter = TokenCounter(ModelSpec(name="s", base_url=url), client)
                return counter, await counter.count_many(["one two three", "网关监听端口"])

        counter, counts = asyncio.run(run())
    assert counter.dialect == "none" and not counter.exact
    assert counts == [estimate("one two three"), estimate("网关监听端口")]


# ---------- the real local model, through the gateway ----------


@pytest.fixture(scope="module")
def llm_proxy(llm_url: str) -> Iterator[RecordingProxy]:
    p = RecordingProxy(server_root(llm_url))
    yield p
    p.close()


@pytest.fixture(scope="module")
def retriever_proxy(retriever_url: str) -> Iterator[RecordingProxy]:
    p = RecordingProxy(retriever_url)
    yield p
    p.close()


def test_smollm2s_answer_stops_within_the_cap_that_fits_the_question(
    gateway_factory: GatewayFactory, llm_proxy: RecordingProxy, llm_url: str
) -> None:
    """A how-to question, which SmolLM2 used to answer until the 1024-token cap: make run's entry
    gives it 384 tokens and the repeat penalty; the answer call carries both, and the real
    completion stays within the cap."""
    question = "How do I run the tests?"
    entry = local_entry(llm_proxy.url + "/v1")
    spec = ModelSpec.model_validate(entry)
    cap = answer_cap(
        spec, question, DEFAULTS.max_tokens_cap, DEFAULTS.answer_tokens, DEFAULTS.answer_open_factor
    )
    assert cap <= DEFAULTS.max_tokens_cap // 2
    with gateway_factory(models=json.dumps([entry])) as base:
        before = len(llm_proxy.posts("/chat/completions"))
        body = chat(base, {"messages": [{"role": "user", "content": question}]})
    (sent,) = [e.request for e in llm_proxy.posts("/chat/completions")[before:]]
    assert sent["max_tokens"] == cap and sent["repeat_penalty"] == 1.3
    assert 0 < body["usage"]["completion_tokens"] <= cap
    assert body["omnirag"]["citations"]


def test_the_prompt_fits_the_window_in_the_models_own_tokens(
    gateway_factory: GatewayFactory, llm_proxy: RecordingProxy, retriever_proxy: RecordingProxy
) -> None:
    """A window too small for every source: the sources kept are the top ones, whole, the last
    cut at a sentence; the prompt llama.cpp really received (its own prompt_tokens) plus the
    answer's cap fits the window; the citations are the sources the model was given."""
    window = 900
    entry = local_entry(llm_proxy.url + "/v1", context_tokens=window, answer_tokens=64)
    question = "Which port does the gateway listen on?"
    with gateway_factory(models=json.dumps([entry]), retriever_url=retriever_proxy.url) as base:
        searched = len(retriever_proxy.posts("/search"))
        before = len(llm_proxy.posts("/chat/completions"))
        body = chat(base, {"messages": [{"role": "user", "content": question}], "top_k": 8})
    response = retriever_proxy.posts("/search")[searched:][0].response
    hits = [h for h in response["hits"] if h["score"] >= DEFAULTS.relevance_threshold]
    (call,) = llm_proxy.posts("/chat/completions")[before:]
    assert call.request["max_tokens"] == 64
    assert call.response["usage"]["prompt_tokens"] + 64 <= window
    system = call.request["messages"][0]["content"]
    given = re.findall(r"^\[(\d+)\] [^\n]*\n<(source-[0-9a-f]{16})>\n(.*?)\n</\2>", system, re.M | re.S)
    kept = [text for _, _, text in given]
    assert [int(n) for n, _, _ in given] == list(range(1, len(kept) + 1))  # rank order, from the top
    assert 1 <= len(kept) < len(hits), "the window holds some sources, not all"
    whole = [" ".join(h["text"].split()) for h in hits]
    assert kept[:-1] == whole[: len(kept) - 1]  # whole sources first
    last = kept[-1]
    assert last == whole[len(kept) - 1] or (
        whole[len(kept) - 1].startswith(last) and re.search(r"[.!?;。！？；…]$", last)
    ), "the last source is whole or cut at a sentence"
    assert [c["n"] for c in body["omnirag"]["citations"]] == list(range(1, len(kept) + 1))


# ---------- the rewrite's check ----------

EN_HISTORY = [
    {"role": "user", "content": "How do I run omnirag locally?"},
    {"role": "assistant", "content": "Run make run; it starts every service and prints the URLs [1]."},
]
ZH_HISTORY = [
    {"role": "user", "content": "omnirag 的检索服务监听哪个端口？"},
    {"role": "assistant", "content": "检索服务监听 8002 端口 [1]。"},
]


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        ("How do I test omnirag?", None),
        ("How do I test omnirag locally?", None),
        ("The answer to this question is:", "reads as an answer"),
        ("Sure, here is how to test it.", "reads as an answer"),
        ("How do I test it?", "names nothing from the conversation"),
        ("How do I run omnirag locally?", "drops 'test'"),
        ("omnirag 怎么测试？", "language zh, question en"),
        ("Run make run; it starts every service and prints the URLs", "repeats an earlier answer"),
        ("omnirag testing", "not a question"),
        ("And how do I test it?", "no rewrite"),
    ],
)
def test_the_rewrite_check_in_english(rewrite: str, reason: str | None) -> None:
    assert check_rewrite(rewrite, "And how do I test it?", EN_HISTORY) == reason


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        ("omnirag 的检索服务的端口怎么修改？", None),
        ("检索服务的端口怎么修改？", None),
        ("它怎么修改？", "names nothing from the conversation"),
        ("答案是：8002", "reads as an answer"),
        ("How do I change the retriever's port?", "language en, question zh"),
        ("omnirag 的检索服务监听哪个端口？", "drops '修改'"),
    ],
)
def test_the_rewrite_check_in_chinese(rewrite: str, reason: str | None) -> None:
    assert check_rewrite(rewrite, "这个怎么修改？", ZH_HISTORY) == reason


def test_the_deterministic_rewrite_joins_the_earlier_questions_terms() -> None:
    en = fallback_rewrite("And how do I test it?", EN_HISTORY)
    assert en == "run omnirag locally And how do I test it?"
    assert check_rewrite(en, "And how do I test it?", EN_HISTORY) is None
    zh = fallback_rewrite("这个怎么修改？", ZH_HISTORY)
    assert zh.endswith(" 这个怎么修改？") and "omnirag" in zh and "检索" in zh and "端口" in zh
    assert check_rewrite(zh, "这个怎么修改？", ZH_HISTORY) is None
    assert fallback_rewrite("And it?", []) == "And it?"  # nothing earlier to add


class Rewrites:
    """The scripted rewrite (set per test); every other call gets a short answer."""

    rewrite = "How do I test omnirag?"

    def __call__(self, body: dict[str, Any]) -> Plain:
        if "Standalone question:" in json.dumps(body["messages"]):
            return Plain(self.rewrite)
        return Plain("Run make test [1].")


@pytest.fixture(scope="module")
def rewrites() -> Iterator[tuple[ScriptedLLM, Rewrites]]:
    script = Rewrites()
    with scripted_llm(script, models=("vllm-model",)) as url:
        yield url, script


@pytest.mark.parametrize(
    ("rewrite", "searched", "used"),
    [
        ("The answer to this question is:", "run omnirag locally And how do I test it?", "fallback"),
        ("How do I test omnirag?", "How do I test omnirag?", "model"),
    ],
)
def test_a_rewrite_that_fails_its_check_is_not_searched(
    gateway_factory: GatewayFactory,
    rewrites: tuple[ScriptedLLM, Rewrites],
    retriever_proxy: RecordingProxy,
    rewrite: str,
    searched: str,
    used: str,
) -> None:
    """The issue's case: after "How do I run omnirag locally?", the model rewrote "And how do I test
    it?" into "The answer to this question is:". The retriever now gets the deterministic rewrite,
    and the answer says which was searched; a good rewrite is searched as written. The vLLM-style
    entry's repetition_penalty rides in the answer call, not in the rewrite's."""
    url, script = rewrites
    script.rewrite = rewrite
    entry = {
        "name": "vllm-model",
        "base_url": url,
        "capabilities": ["text"],
        "sampling": {"repetition_penalty": 1.15},
    }
    with gateway_factory(models=json.dumps([entry]), retriever_url=retriever_proxy.url) as base:
        start, calls = len(retriever_proxy.posts("/search")), len(url.chat_requests)
        messages = [*EN_HISTORY, {"role": "user", "content": "And how do I test it?"}]
        for stream in (False, True):
            r = httpx.post(
                base + "/v1/chat/completions",
                json={"messages": messages, "stream": stream},
                headers=AUTH,
                timeout=120,
            )
            assert r.status_code == 200, r.text
            if stream:
                tail = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")][-1]
                meta = tail["omnirag"]
            else:
                meta = r.json()["omnirag"]
            assert meta["rewrite"] == used and meta["rewritten_query"] == searched
        metrics = httpx.get(base + "/metrics").text
    assert [s["query"] for s in retriever_proxy.searches[start:]] == [searched, searched]
    assert metric_value(metrics, "omnirag_gateway_rewrites_checked_total", f'result="{used}"') == 2
    sent = url.chat_requests[calls:]
    rewrite_calls = [b for b in sent if "Standalone question:" in json.dumps(b["messages"])]
    answer_calls = [b for b in sent if b not in rewrite_calls]
    assert len(rewrite_calls) == 2 and len(answer_calls) == 2
    assert all("repetition_penalty" not in b for b in rewrite_calls)
    assert all(b["repetition_penalty"] == 1.15 for b in answer_calls)
    # "How do I … ?" asks for steps: the gateway's default cap times the open factor.
    assert all(
        b["max_tokens"] == int(DEFAULTS.answer_tokens * DEFAULTS.answer_open_factor) for b in answer_calls
    )
