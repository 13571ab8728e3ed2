"""Reasoning models, end to end: thinking reaches the client as ``reasoning_content`` (never inside
``content``), is never stored, never sent back, never searched, and its tokens are counted.

The reasoning models (DeepSeek-R1-0528, Qwen3) need a GPU, so their output comes from the scripted
upstream (omnirag_harness.scripted_llm), which replays vLLM's output shapes over real HTTP. All
else is real: Redis, the embedder, the indexed example knowledge base, the retriever (behind a
recording proxy, so the test sees the query it really received) and the gateway, driven by the
openai SDK, LangChain and raw HTTP."""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from langchain_openai import ChatOpenAI
from omnirag_harness.gateway_stack import DEV_KEY, GatewayFactory
from omnirag_harness.recording_proxy import RecordingProxy
from omnirag_harness.scripted_llm import (
    InlineThink,
    Plain,
    ReasoningField,
    Script,
    ScriptedLLM,
    ToolCallAfterReasoning,
    scripted_llm,
    tokens,
)

from omnirag.gateway.rag import clean_rewrite, empty_answer, rewrite_limits
from omnirag.gateway.reasoning import (
    ReasoningChatOpenAI,
    ReasoningSplitter,
    answer_only,
    split_message,
    strip_history,
)
from omnirag.gateway.registry import ModelSpec

# "zebra-quartz" is in no document: where it shows, the thinking leaked.
THINKING = "The user asks about the gateway port (zebra-quartz). Source [1] says 8000; [2] is off topic."
ANSWER = "The gateway listens on port 8000 [1]."
QUESTION = "Which port does the gateway listen on?"
REWRITTEN = "Which port does the retriever listen on?"
BUDGET = 300
COUNT_KEYS = [f"count-{i}" for i in range(6)]


# ---------- the splitter, alone ----------

SHAPES = [
    # (model output, reasoning model, thinking, answer)
    ("<think>\n" + THINKING + "\n</think>\n\n" + ANSWER, False, THINKING, ANSWER),
    ("\n <think>" + THINKING + "</think>" + ANSWER, True, THINKING, ANSWER),
    (THINKING + "\n</think>\n\n" + ANSWER, True, THINKING, ANSWER),  # DeepSeek-R1-0528: close only
    (ANSWER, True, "", ANSWER),  # a reasoning model with thinking off
    (ANSWER, False, "", ANSWER),
    ("a </think> b", False, "", "a </think> b"),  # a lone close tag means nothing for other models
    ("<think>" + THINKING, True, THINKING, ""),  # cut off while thinking
    ("<thi", False, "", "<thi"),
]


def _run(deltas: list[str], reasoning_model: bool) -> tuple[str, str, list[str]]:
    splitter = ReasoningSplitter(reasoning_model=reasoning_model)
    thinking = answer = ""
    order: list[str] = []
    for piece in [*(splitter.feed(d) for d in deltas), splitter.finish()]:
        thinking += piece.reasoning
        answer += piece.answer
        order += ["r"] * bool(piece.reasoning) + ["a"] * bool(piece.answer)
    return thinking, answer, order


@pytest.mark.parametrize(("text", "reasoning_model", "thinking", "answer"), SHAPES)
def test_splitter_at_every_split_point(text: str, reasoning_model: bool, thinking: str, answer: str) -> None:
    """Every way of cutting the output in three deltas, and one delta per character, gives the same
    thinking and answer as the whole message; thinking never follows answer."""
    whole = split_message(text, reasoning_model=reasoning_model)
    assert (whole.reasoning, whole.answer) == (thinking, answer)
    for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2):
        got = _run([text[:i], text[i:j], text[j:]], reasoning_model)
        assert got[:2] == (thinking, answer), (i, j)
        assert got[2] == sorted(got[2], key="ra".index), (i, j)
    assert _run(list(text), reasoning_model)[:2] == (thinking, answer)


def test_the_reasoning_field_wins_and_history_loses_its_thinking() -> None:
    piece = split_message(ANSWER, THINKING, reasoning_model=True)
    assert (piece.reasoning, piece.answer) == (THINKING, ANSWER)
    assert answer_only("<think>x</think>\n\nDone.") == "Done."
    assert answer_only("x\n</think>\nDone.") == "Done."
    sent: list[dict[str, Any]] = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "<think>" + THINKING + "</think>" + ANSWER,
            "reasoning_content": "r",
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": THINKING + "</think>A"}],
            "reasoning": "r",
        },
    ]
    clean = strip_history(sent)
    assert clean[0] is sent[0]
    assert clean[1] == {"role": "assistant", "content": ANSWER}
    assert clean[2] == {"role": "assistant", "content": [{"type": "text", "text": "A"}]}


def test_the_held_output_of_a_reasoning_model_is_bounded() -> None:
    splitter = ReasoningSplitter(reasoning_model=True, hold_limit=100)
    assert not splitter.feed("x" * 100)  # undecided: held
    piece = splitter.feed("y")  # past the bound: thinking, passed on
    assert piece.reasoning == "x" * 100 + "y" and not piece.answer
    assert splitter.feed("</think>\n\nok").answer == "ok"


def test_the_rewrite_keeps_only_the_answer() -> None:
    q = "And the retriever?"
    assert clean_rewrite("<think>\nThe user means the port.\n</think>\n\n" + REWRITTEN, q) == REWRITTEN
    assert clean_rewrite("The user means the port.\n</think>\n\n" + REWRITTEN, q) == REWRITTEN
    assert clean_rewrite("<think>\nThe user means the port, so", q) == q  # cut off while thinking


def test_rewrite_limits_turn_thinking_off_or_make_room() -> None:
    base = {"name": "m", "base_url": "http://127.0.0.1:1/v1"}
    plain = ModelSpec(**base)
    qwen3 = ModelSpec(**base, capabilities=("text", "reasoning"), thinking_off={"enable_thinking": False})
    r1 = ModelSpec(**base, capabilities=("text", "reasoning"), reasoning_budget=BUDGET)
    assert rewrite_limits(plain, 64) == {"extra_body": {"max_tokens": 64}}
    assert rewrite_limits(qwen3, 64) == {
        "extra_body": {"max_tokens": 64, "chat_template_kwargs": {"enable_thinking": False}}
    }
    assert rewrite_limits(r1, 64) == {"extra_body": {"max_tokens": 64 + BUDGET}}


# ---------- through the gateway ----------


class Upstream:
    """What the scripted upstream answers: ``rewrite`` for the rewrite call, ``answer`` for the rest."""

    def __init__(self) -> None:
        self.answer: Script = Plain(ANSWER)
        self.rewrite: Script = Plain(REWRITTEN)

    def __call__(self, body: dict[str, Any]) -> Script:
        return self.rewrite if "Standalone question:" in json.dumps(body["messages"]) else self.answer


Up = tuple[ScriptedLLM, Upstream]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedLLM, Upstream]]:
    scripts = Upstream()
    with scripted_llm(scripts, models=("ds-r1", "qwen3", "plain")) as url:
        yield url, scripts


@pytest.fixture(scope="module")
def proxy(retriever_url: str) -> Iterator[RecordingProxy]:
    p = RecordingProxy(retriever_url)
    yield p
    p.close()


def _models(url: str) -> str:
    return json.dumps(
        [
            # R1: cannot turn thinking off, so its calls get a budget.
            {
                "name": "deepseek-r1",
                "base_url": url,
                "upstream_model": "ds-r1",
                "capabilities": ["text", "reasoning", "tools"],
                "reasoning_budget": BUDGET,
            },
            {
                "name": "qwen3",
                "base_url": url,
                "capabilities": ["text", "reasoning", "tools"],
                "thinking_off": {"enable_thinking": False},
                "reasoning_budget": BUDGET,
            },
            {"name": "plain", "base_url": url, "capabilities": ["text", "tools"]},
        ]
    )


@pytest.fixture(scope="module")
def gw(
    gateway_factory: GatewayFactory, upstream: tuple[ScriptedLLM, Upstream], proxy: RecordingProxy
) -> Iterator[str]:
    """The gateway over the three scripted models; the rewrite uses the default, R1."""
    keys = [{"name": n, "key": f"{n}-key-0123456789abcdef", "tpm": 1_000_000} for n in COUNT_KEYS]
    with gateway_factory(
        models=_models(upstream[0]), retriever_url=proxy.url, api_keys=json.dumps(keys)
    ) as base:
        yield base


def sdk(base: str, key: str = DEV_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(
    base: str, model: str, *, stream: bool, rag: bool = True, key: str = DEV_KEY, **body: Any
) -> tuple[str, str, dict[str, Any]]:
    """(thinking, answer, the omnirag object or the last body) through the openai SDK, checking on a
    stream that every reasoning_content delta comes before the first content delta."""
    messages = body.pop("messages", [{"role": "user", "content": QUESTION}])
    extra = {"rag": rag} | body.pop("extra", {})
    c = sdk(base, key)
    if not stream:
        r = c.chat.completions.create(model=model, messages=messages, extra_body=extra, **body)
        msg = r.choices[0].message
        assert r.model == model
        return (msg.model_extra or {}).get("reasoning_content") or "", msg.content or "", r.model_dump()
    thinking = answer = ""
    last: dict[str, Any] = {}
    for chunk in c.chat.completions.create(
        model=model, messages=messages, extra_body=extra, stream=True, **body
    ):
        assert chunk.model == model
        last = chunk.model_dump()
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = (delta.model_extra or {}).get("reasoning_content")
        if piece:
            assert not answer, "thinking after the answer began"
            thinking += piece
        answer += delta.content or ""
    return thinking, answer, last


RAG_SHAPES: list[Callable[[], Script]] = [
    lambda: ReasoningField(THINKING, ANSWER),  # current vLLM (the chart's v0.33)
    lambda: ReasoningField(THINKING, ANSWER, field="reasoning_content"),  # vLLM before 0.11, DeepSeek's API
    lambda: InlineThink(THINKING, ANSWER),  # no reasoning parser
    lambda: InlineThink(THINKING, ANSWER, open_tag=False),  # DeepSeek-R1-0528 without a parser
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("rag", [True, False])
@pytest.mark.parametrize("shape", range(len(RAG_SHAPES)))
def test_thinking_travels_as_reasoning_content(
    gw: str, upstream: Up, shape: int, rag: bool, stream: bool
) -> None:
    """Each shape, RAG and pass-through, streamed at every character and not: the thinking is in
    reasoning_content, the answer alone in content, and the session keeps the answer only."""
    url, scripts = upstream
    script = RAG_SHAPES[shape]()
    scripts.answer = dataclasses.replace(script, chunk_chars=1) if stream else script
    session = f"r-{uuid.uuid4().hex[:12]}"
    thinking, answer, last = ask(
        gw, "deepseek-r1", stream=stream, rag=rag, extra={"session_id": session}, max_tokens=50
    )
    assert thinking == THINKING
    assert answer == ANSWER
    if rag:  # citations come from the answer: the thinking's "[2]" is not one
        assert len(last["omnirag"]["citations"]) >= 2
        assert last["omnirag"]["cited"] == [1]
    stored = httpx.get(f"{gw}/v1/sessions/{session}", headers={"Authorization": f"Bearer {DEV_KEY}"}).json()
    assert [m["content"] for m in stored["messages"]] == [QUESTION, ANSWER]
    assert "zebra-quartz" not in json.dumps(stored) and "think" not in json.dumps(stored)
    # What went upstream: the entry's upstream name, and room to think before the answer.
    sent = url.chat_requests[-1]
    assert sent["model"] == "ds-r1"
    assert sent["max_tokens"] == 50 + BUDGET


def test_raw_sse_has_reasoning_content_and_no_think_tags(gw: str, upstream: Up) -> None:
    """Split inside the tags at chosen points, the raw stream carries reasoning_content deltas and
    content deltas that never hold a piece of a tag."""
    _, scripts = upstream
    whole = THINKING + "\n</think>\n\n" + ANSWER
    at = whole.index("</think>")
    scripts.answer = InlineThink(THINKING, ANSWER, open_tag=False, cuts=[at + 1, at + 4, at + 8, at + 9])
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    thinking, content = "", ""
    with httpx.stream(
        "POST",
        gw + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {DEV_KEY}"},
        timeout=60,
    ) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                delta = choice["delta"]
                assert "reasoning" not in delta  # clients get one name
                thinking += delta.get("reasoning_content") or ""
                content += delta.get("content") or ""
    assert (thinking, content) == (THINKING, ANSWER)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", ["reasoning", None])
def test_tool_call_after_reasoning_passes_through(
    gw: str, upstream: Up, field: str | None, stream: bool
) -> None:
    _, scripts = upstream
    scripts.answer = ToolCallAfterReasoning(THINKING, field="reasoning" if field else None, chunk_chars=1)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    create: Any = sdk(gw).chat.completions.create  # the SDK's overloads want typed params
    if not stream:
        r = create(model="deepseek-r1", messages=messages, tools=tools)
        msg = r.choices[0].message
        assert msg.model_extra["reasoning_content"] == THINKING
        assert not msg.content
        call = msg.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
        assert r.choices[0].finish_reason == "tool_calls"
        return
    thinking, content, name, arguments = "", "", "", ""
    for chunk in create(model="deepseek-r1", messages=messages, tools=tools, stream=True):
        for choice in chunk.choices:
            thinking += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                name += tc.function.name or ""
                arguments += tc.function.arguments or ""
    assert (thinking, content.strip()) == (THINKING, "")
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Paris"})


def test_earlier_thinking_is_not_sent_back(gw: str, upstream: Up) -> None:
    """A client that sends its conversation back, reasoning_content and inline tags included: the
    model gets the answers only, in pass-through and in RAG (answer and rewrite prompts)."""
    url, scripts = upstream
    scripts.answer = Plain(ANSWER)
    history = [
        {"role": "user", "content": "Which port does the retriever listen on?"},
        {
            "role": "assistant",
            "content": "<think>" + THINKING + "</think>It is 8002 [1].",
            "reasoning_content": THINKING,
        },
        {"role": "user", "content": "And how do I change it?"},
    ]
    before = len(url.chat_requests)
    for rag in (False, True):
        ask(gw, "deepseek-r1", stream=False, rag=rag, messages=history)
    sent = url.chat_requests[before:]
    assert len(sent) == 3  # pass-through; then RAG's rewrite and answer
    for body in sent:
        text = json.dumps(body["messages"])
        assert "It is 8002" in text
        assert "zebra-quartz" not in text and "think>" not in text and "reasoning" not in text


@pytest.mark.parametrize("inline", [False, True])
def test_follow_up_after_a_reasoning_answer_searches_the_rewritten_question(
    gw: str, upstream: Up, proxy: RecordingProxy, inline: bool
) -> None:
    """Turn one: a reasoning answer. Turn two, a follow-up: R1 (thinking cannot be turned off)
    rewrites it after thinking; the retriever receives exactly the rewritten question, and the
    rewrite call had room to think."""
    url, scripts = upstream
    session = f"f-{uuid.uuid4().hex[:12]}"
    scripts.answer = ReasoningField(THINKING, "The retriever listens on port 8002 [1].")
    ask(
        gw,
        "deepseek-r1",
        stream=True,
        extra={"session_id": session},
        messages=[{"role": "user", "content": "Which port does the retriever listen on?"}],
    )
    scripts.rewrite = (
        InlineThink("The user means the retriever's port.", REWRITTEN, open_tag=False)
        if inline
        else ReasoningField("The user means the retriever's port.", REWRITTEN)
    )
    before, searched = len(url.chat_requests), len(proxy.searches)
    _, _, body = ask(
        gw,
        "deepseek-r1",
        stream=False,
        extra={"session_id": session},
        messages=[{"role": "user", "content": "Which port does it listen on?"}],
    )
    # A rewrite that keeps the follow-up's words and names what "it" is: searched as written.
    assert body["omnirag"]["rewritten_query"] == REWRITTEN and body["omnirag"]["rewrite"] == "model"
    assert [s["query"] for s in proxy.searches[searched:]] == [REWRITTEN]
    rewrite_call, answer_call = url.chat_requests[before:]
    assert "Standalone question:" in json.dumps(rewrite_call["messages"])
    assert rewrite_call["max_tokens"] == 64 + BUDGET and "chat_template_kwargs" not in rewrite_call
    assert THINKING not in json.dumps(rewrite_call) and THINKING not in json.dumps(answer_call)


def test_a_model_that_can_turn_thinking_off_rewrites_without_it(
    gateway_factory: GatewayFactory, upstream: Up, proxy: RecordingProxy
) -> None:
    """GATEWAY_REWRITE_MODEL is Qwen3, which turns thinking off: the rewrite call says so and gets
    no extra budget; the answer call (R1, the default) may think."""
    url, scripts = upstream
    scripts.answer = ReasoningField(THINKING, ANSWER)
    scripts.rewrite = Plain(REWRITTEN)
    before, searched = len(url.chat_requests), len(proxy.searches)
    history = [
        {"role": "user", "content": "Which port does the retriever listen on?"},
        {"role": "assistant", "content": "It is 8002 [1]."},
        {"role": "user", "content": "Which port does it listen on?"},
    ]
    with gateway_factory(models=_models(url), retriever_url=proxy.url, rewrite_model="qwen3") as base:
        ask(base, "deepseek-r1", stream=True, messages=history)
    rewrite_call, answer_call = url.chat_requests[before:]
    assert (rewrite_call["model"], answer_call["model"]) == ("qwen3", "ds-r1")
    assert rewrite_call["chat_template_kwargs"] == {"enable_thinking": False}
    assert rewrite_call["max_tokens"] == 64
    assert "chat_template_kwargs" not in answer_call  # the answer may think
    assert [s["query"] for s in proxy.searches[searched:]] == [REWRITTEN]


def _tokens_counted(redis_url: str, name: str) -> int:
    r = redis.Redis.from_url(redis_url)
    return sum(int(r.get(k) or 0) for k in r.scan_iter(f"omnirag:ratelimit:{name}:tok:*"))


@pytest.mark.parametrize(
    ("stream", "usage", "key_no"), [(False, True, 0), (True, True, 1), (True, False, 2), (False, False, 3)]
)
def test_the_keys_token_count_includes_thinking(
    gw: str, upstream: Up, redis_url: str, stream: bool, usage: bool, key_no: int
) -> None:
    _, scripts = upstream
    long_thinking = THINKING * 20
    scripts.answer = ReasoningField(long_thinking, ANSWER, chunk_chars=8, usage=usage)
    name = COUNT_KEYS[key_no]
    for rag in (True, False):
        ask(gw, "deepseek-r1", stream=stream, rag=rag, key=f"{name}-key-0123456789abcdef")
    counted = _tokens_counted(redis_url, name)
    generated = tokens(long_thinking + ANSWER)
    if usage:  # the upstream's own count (prompt 11 + completion), twice
        assert counted == 2 * (11 + generated)
    else:  # estimated, thinking included: well above what the answer alone could be
        assert counted >= 2 * (len(long_thinking) // 8)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_that_is_all_thinking_says_so(gw: str, upstream: Up, stream: bool) -> None:
    _, scripts = upstream
    scripts.answer = InlineThink(THINKING, "", finish_reason="length")
    session = f"e-{uuid.uuid4().hex[:12]}"
    thinking, answer, last = ask(gw, "deepseek-r1", stream=stream, extra={"session_id": session})
    assert thinking.startswith(THINKING)
    assert answer == empty_answer(QUESTION)
    assert "answer" in last["omnirag"]["degraded"]
    # Nothing worth remembering: the turn is not stored.
    got = httpx.get(f"{gw}/v1/sessions/{session}", headers={"Authorization": f"Bearer {DEV_KEY}"})
    assert got.status_code == 404


def test_langchain_clients(gw: str, upstream: Up) -> None:
    """LangChain's ChatOpenAI (1.x reads OpenAI's own fields only) gets the clean answer in content;
    a ChatOpenAI that keeps the field (as ``ReasoningChatOpenAI`` does, or langchain-deepseek's
    ChatDeepSeek) reads the thinking from ``additional_kwargs["reasoning_content"]``."""
    _, scripts = upstream
    scripts.answer = InlineThink(THINKING, ANSWER, open_tag=False, chunk_chars=3)
    args = {"model": "deepseek-r1", "base_url": gw + "/v1", "api_key": DEV_KEY, "max_retries": 0}
    plain = ChatOpenAI(**args)
    assert plain.invoke(QUESTION).content == ANSWER
    assert "".join(str(c.content) for c in plain.stream(QUESTION)) == ANSWER
    keeping = ReasoningChatOpenAI(**args)
    message = keeping.invoke(QUESTION)
    assert (message.content, message.additional_kwargs["reasoning_content"]) == (ANSWER, THINKING)
    chunks = list(keeping.stream(QUESTION))
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == THINKING
    assert "".join(str(c.content) for c in chunks) == ANSWER


def test_a_model_without_reasoning_streams_its_answer_untouched(gw: str, upstream: Up) -> None:
    _, scripts = upstream
    scripts.answer = Plain("a </think> b " + ANSWER, chunk_chars=1)
    for stream in (False, True):
        thinking, answer, _ = ask(gw, "plain", stream=stream, rag=False)
        assert (thinking, answer) == ("", "a </think> b " + ANSWER)
