"""Answers a user can trust (issue 15): the grounding check, the extractive answer, the loop guard,
and the answer modes through the real gateway stack.

The unit tests run the checks on the example knowledge base's own text
(examples/knowledge-base/), in English and Chinese. The stack tests use the real Redis, embedder,
indexed example knowledge base and retriever; the answering model is the scripted upstream
(omnirag_harness.scripted_llm) where a test needs an exact bad answer — a wrong port, a loop —
and the real llama.cpp SmolLM2 where what matters holds for whatever the model says.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from omnirag_harness.gateway_stack import AUTH, REPO, GatewayFactory
from omnirag_harness.scripted_llm import Plain, Script, ScriptedLLM, scripted_llm

from omnirag.core.text import tokenize
from omnirag.gateway.extract import extract, sentences
from omnirag.gateway.grounding import check, language
from omnirag.gateway.repetition import LoopGuard, degenerate

GETTING_STARTED = (REPO / "examples/knowledge-base/getting-started.md").read_text(encoding="utf-8")
FAQ_ZH = (REPO / "examples/knowledge-base/faq.zh.md").read_text(encoding="utf-8")
PORTS = (
    "The gateway listens on port 8000. The embedder listens on port 8001. The retriever listens on "
    "port 8002. Redis, which keeps chat history, listens on port 6379."
)
QUESTION = "Which port does the gateway listen on?"
RIGHT = "The gateway listens on port 8000 [1]."
WRONG = "The gateway listens on port 8001 [1]."
ZH_SOURCE = "默认的嵌入模型 all-MiniLM-L6-v2 只支持英文。对于中文问题，混合检索会依靠 BM25 和结巴分词。"
ZH_QUESTION = "默认的嵌入模型支持中文吗？"


@dataclass(frozen=True)
class Src:
    number: int
    text: str


# ---------- the grounding check ----------


def test_a_wrong_number_fails_even_when_the_chunk_has_it_elsewhere() -> None:
    """The chunk lists every port: 8001 is in it, for the embedder. The gateway's is still 8000."""
    sources = [Src(1, PORTS)]
    assert check(RIGHT, QUESTION, sources, [1]) == (True, None)
    assert check(WRONG, QUESTION, sources, [1]) == (False, "number 8001 is not in the cited sources")
    assert check("8001 [1]", QUESTION, sources, [1]) == (False, "number 8001 is not in the cited sources")
    # The same number about what the source says it is for passes.
    assert check("The embedder uses port 8001 [1].", QUESTION, sources, [1]).grounded


def test_claims_are_checked_against_the_sources_cited() -> None:
    sources = [Src(1, "Redis keeps chat history."), Src(2, PORTS)]
    assert check("It listens on port 8000 [1].", QUESTION, sources, [1]) == (
        False,
        "number 8000 is not in the cited sources",
    )
    # Citing nothing: checked against every source given.
    assert check("The gateway listens on port 8000.", QUESTION, sources, []) == (True, None)
    assert check("Bananas ripen quickly in warm tropical orchards.", QUESTION, sources, []) == (
        False,
        "cites no source",
    )
    assert check("Bananas ripen quickly in warm tropical orchards [2].", QUESTION, sources, [2]) == (
        False,
        "only 0% of its words are in the cited sources",
    )


def test_names_and_quotes_must_be_in_the_sources() -> None:
    sources = [Src(1, PORTS)]
    assert check("The gateway stores history in Kafka and Postgres [1].", QUESTION, sources, [1]) == (
        False,
        "names 'Kafka', 'Postgres' not in the cited sources",
    )
    assert check('The docs call it the "front door" [1].', QUESTION, sources, [1]) == (
        False,
        "quoted 'front door' not in the cited sources",
    )
    # A name the question asks about may be named in the answer: "No, it does not use Kafka".
    assert check("No, the gateway does not use Kafka [1].", "Does the gateway use Kafka?", sources, [1])[0]
    assert check("不支持，默认的嵌入模型只支持英文[1]。", ZH_QUESTION, [Src(1, ZH_SOURCE)], [1]).grounded
    assert check("默认的嵌入模型 bge-m3 只支持英文[1]。", ZH_QUESTION, [Src(1, ZH_SOURCE)], [1]) == (
        False,
        "names 'bge-m3' not in the cited sources",
    )
    assert check("默认的嵌入模型由张伟在北京开发[1]。", ZH_QUESTION, [Src(1, ZH_SOURCE)], [1]) == (
        False,
        "names '张伟', '北京' not in the cited sources",
    )


def test_numbers_and_commands_must_be_stated_where_the_answer_claims() -> None:
    """Wrong answers SmolLM2 gave in the eval (bench/results/answers.json) that a whole-page check
    let through: the page names every port and both commands, just not for what the answer says."""
    page = [Src(1, GETTING_STARTED)]
    retriever = "Which port does the retriever listen on?"
    stack = "Which command starts the whole local stack of omnirag?"
    helm = "Which command installs omnirag on a GPU Kubernetes cluster?"
    assert check("The port 6379 is the default one for retriever.", retriever, page, []) == (
        False,
        "number 6379 is not in the sources",
    )
    assert check("The command `make test` starts a whole local stack of omnirag.", stack, page, []) == (
        False,
        "quoted 'make test' not in the sentence it matches in the sources",
    )
    assert not check("The command to install it on a GPU Kubernetes cluster is `make test`", helm, page, [])[
        0
    ]
    # The same page backs the right answers, the port on a hard-wrapped line included.
    assert check("The retriever listens on port 8002 [1].", retriever, page, [1]) == (True, None)
    assert check("Run `make run` [1].", stack, page, [1]) == (True, None)
    assert check("Use `helm install` [1].", helm, page, [1]) == (True, None)


def test_a_question_that_asks_for_a_number_needs_one() -> None:
    queue = "Which status code does the embedder answer when the queue is full?"
    source = [Src(1, "Requests are merged into batches; a full queue answers 429 with Retry-After.")]
    assert check("The embedder answers when the queue is full, with a busy signal.", queue, source, []) == (
        False,
        "asked for a number, states none",
    )
    assert check("A full queue answers 429 [1].", queue, source, [1]) == (True, None)
    assert check("It answers 429 with Retry-After [1].", "How many retries are allowed?", source, [1])[0]


def test_the_answer_must_be_in_the_questions_language() -> None:
    zh = [Src(1, ZH_SOURCE)]
    assert language("使用 Redis 和 FAISS 保存数据") == "zh"  # Latin names count as words, not letters
    assert check("The default model only supports English [1].", ZH_QUESTION, zh, [1]) == (
        False,
        "answer language en, question zh",
    )
    # A switch midway: mostly Chinese, then a whole English sentence.
    switched = "默认的嵌入模型只支持英文[1]。It does not support Chinese at all, so use another model."
    assert check(switched, ZH_QUESTION, zh, [1]) == (False, "answer language en, question zh")
    assert check("网关监听端口 8000 [1]。", QUESTION, [Src(1, PORTS)], [1]) == (
        False,
        "answer language zh, question en",
    )


def test_degenerate_answers_fail() -> None:
    sources = [Src(1, PORTS)]
    assert check(RIGHT * 4, QUESTION, sources, [1]) == (False, "repetition")
    assert check(QUESTION, QUESTION, sources, []) == (False, "echoes the question")
    assert check(" [1] ", QUESTION, sources, [1]) == (False, "empty")
    zh = [Src(1, ZH_SOURCE)]
    assert check("默认的嵌入模型只支持英文。" * 3, ZH_QUESTION, zh, []) == (False, "repetition")
    assert check("默认的嵌入模型支持中文吗", ZH_QUESTION, zh, []) == (False, "echoes the question")


@pytest.mark.parametrize("text", [GETTING_STARTED, FAQ_ZH, (REPO / "DESIGN.md").read_text(encoding="utf-8")])
def test_real_prose_is_not_degenerate(text: str) -> None:
    assert degenerate(text, "What is omnirag?") is None
    guard = LoopGuard()
    assert not any(guard.feed(text[i : i + 3]) for i in range(0, len(text), 3))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("block", [RIGHT + " ", "默认的嵌入模型只支持英文[1]。"])
def test_the_loop_guard_stops_a_loop_at_any_chunking(block: str, size: int) -> None:
    """It trips during the third copy of the block whatever the deltas, and keeps one copy."""
    text = "Sure. " + block * 20
    guard = LoopGuard()
    fed = 0
    for i in range(0, len(text), size):
        fed = i + size
        if guard.feed(text[i : i + size]):
            break
    assert guard.keep is not None
    assert fed <= len("Sure. ") + 3 * len(block) + size
    assert guard.text[: guard.keep].strip() == "Sure. " + block.strip()


# ---------- the extractive answer ----------


async def test_extract_finds_the_sentence_that_answers() -> None:
    docs = [Src(1, GETTING_STARTED), Src(2, FAQ_ZH)]
    cases = {
        QUESTION: (1, "The gateway listens on port 8000."),
        "How do I run the tests?": (1, "`make test` installs what is missing and runs every test."),
        "对话历史保存在哪里？": (2, "长期的对话历史保存在 Redis 数据库里"),
        "默认的嵌入模型支持中文吗？": (2, "默认的嵌入模型 all-MiniLM-L6-v2 只支持英文。"),
    }
    for question, (number, expected) in cases.items():
        quote = await extract(question, docs)
        assert quote is not None
        assert quote.citation == number
        assert expected in quote.text, (question, quote.text)
        assert len(quote.text) < 300


def test_sentences_keep_headings_out_and_join_wrapped_lines() -> None:
    texts = [s for s, _ in sentences(GETTING_STARTED)]
    assert "Ports" not in texts and "Getting started with omnirag" not in texts
    assert "The local LLM server (llama.cpp) listens on port 6006 and the web UI on port 7860." in texts
    zh = dict(sentences(FAQ_ZH))
    assert zh["默认的嵌入模型 all-MiniLM-L6-v2 只支持英文。"] == "默认的嵌入模型支持中文吗？"


async def test_extract_does_without_a_failing_embedder() -> None:
    async def down(texts: list[str]) -> list[list[float]]:
        raise httpx.ConnectError("embedder down")

    quote = await extract(QUESTION, [Src(1, GETTING_STARTED)], down)
    assert quote is not None and quote.text == "The gateway listens on port 8000."
    assert isinstance(quote.embedder_error, httpx.ConnectError)


def test_the_tokenizer_is_the_index_one() -> None:
    from omnirag.index import sparse

    assert sparse.tokenize is tokenize
    assert tokenize("The Gateway 在 北京 listens") == ["gateway", "在", "北京", "listens"]


# ---------- through the gateway ----------


class Answers:
    """What the scripted upstream answers next (set by each test)."""

    def __init__(self) -> None:
        self.script: Script = Plain(RIGHT)

    def __call__(self, body: dict[str, Any]) -> Script:
        return self.script


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedLLM, Answers]]:
    answers = Answers()
    with scripted_llm(answers, models=("plain",)) as url:
        yield url, answers


@pytest.fixture(scope="module")
def gw(gateway_factory: GatewayFactory, upstream: tuple[ScriptedLLM, Answers]) -> Iterator[str]:
    models = json.dumps([{"name": "plain", "base_url": upstream[0], "capabilities": ["text"]}])
    with gateway_factory(models=models) as base:
        yield base


def chat(base: str, question: str = QUESTION, **body: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}]} | body,
        headers=AUTH,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()


def chat_stream(base: str, question: str = QUESTION, **body: Any) -> tuple[list[str], str, dict[str, Any]]:
    """(the content deltas, the finish reason, the omnirag object) of a streamed answer."""
    deltas: list[str] = []
    finish = ""
    omnirag: dict[str, Any] = {}
    payload = {"messages": [{"role": "user", "content": question}], "stream": True} | body
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=payload, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            omnirag = event.get("omnirag") or omnirag
            for choice in event.get("choices") or []:
                if choice["delta"].get("content"):
                    deltas.append(choice["delta"]["content"])
                finish = choice.get("finish_reason") or finish
    return deltas, finish, omnirag


def _in_its_source(quote: dict[str, Any], citations: list[dict[str, Any]]) -> bool:
    source = citations[quote["citation"] - 1]["source"]
    text = " ".join((REPO / "examples/knowledge-base" / source).read_text(encoding="utf-8").split())
    return " ".join(quote["text"].split()) in text


@pytest.mark.parametrize("stream", [False, True])
def test_extract_mode_quotes_a_source_without_the_llm(
    gw: str, upstream: tuple[ScriptedLLM, Answers], stream: bool
) -> None:
    calls = len(upstream[0].chat_requests)
    if stream:
        deltas, finish, o = chat_stream(gw, answer_mode="extract")
        content = "".join(deltas)
        assert finish == "stop"
    else:
        body = chat(gw, answer_mode="extract")
        content, o = body["choices"][0]["message"]["content"], body["omnirag"]
    assert len(upstream[0].chat_requests) == calls  # no LLM call
    assert o["answer_mode"] == "extract" and o["answered_by"] == "extract"
    assert o["grounded"] is None and o["fallback"] is False
    assert "port 8000" in o["quote"]["text"]
    assert _in_its_source(o["quote"], o["citations"])
    assert content == f"{o['quote']['text']} [{o['quote']['citation']}]"
    assert o["cited"] == [o["quote"]["citation"]]


@pytest.mark.parametrize("stream", [False, True])
def test_auto_quotes_at_once_for_a_language_the_model_does_not_answer(
    gateway_factory: GatewayFactory, upstream: tuple[ScriptedLLM, Answers], stream: bool
) -> None:
    """A model listed with languages ["en"]: in auto, a Chinese question gets the extract without a
    generation (no upstream call), marked as a fallback with the reason; an English one is generated."""
    models = json.dumps(
        [{"name": "plain", "base_url": upstream[0], "capabilities": ["text"], "languages": ["en"]}]
    )
    upstream[1].script = Plain(RIGHT)
    with gateway_factory(models=models) as base:
        calls = len(upstream[0].chat_requests)
        question = "对话历史保存在哪里？"
        if stream:
            deltas, _, o = chat_stream(base, question, answer_mode="auto")
            content = "".join(deltas)
        else:
            body = chat(base, question, answer_mode="auto")
            content, o = body["choices"][0]["message"]["content"], body["omnirag"]
        assert len(upstream[0].chat_requests) == calls  # nothing generated
        assert o["answered_by"] == "extract" and o["fallback"] is True and o["grounded"] is None
        assert o["grounding_reason"] == "plain does not answer zh questions (it answers in en)"
        assert content.startswith("当前模型不擅长用中文回答") and "Redis" in o["quote"]["text"]
        body = chat(base, answer_mode="auto")  # English: the model answers
        assert len(upstream[0].chat_requests) == calls + 1
        assert body["omnirag"]["answered_by"] == "model" and body["omnirag"]["grounded"] is True


def test_an_extract_mode_follow_up_calls_no_llm_at_all(
    gw: str, upstream: tuple[ScriptedLLM, Answers]
) -> None:
    """A follow-up needs a rewrite; in extract mode the deterministic one is searched, so not even
    the rewrite calls a model: the answer is instant."""
    calls = len(upstream[0].chat_requests)
    history = [
        {"role": "user", "content": "Which port does the gateway listen on?"},
        {"role": "assistant", "content": "Port 8000 [1]."},
        {"role": "user", "content": "How do I change it?"},
    ]
    body = chat(gw, messages=history, answer_mode="extract")
    o = body["omnirag"]
    assert len(upstream[0].chat_requests) == calls
    assert o["rewrite"] == "fallback" and o["answered_by"] == "extract"
    assert "gateway" in o["rewritten_query"].lower() and "change" in o["rewritten_query"].lower()


def test_auto_replaces_a_wrong_answer(gw: str, upstream: tuple[ScriptedLLM, Answers]) -> None:
    upstream[1].script = Plain(WRONG)
    session = f"s-{uuid.uuid4().hex[:12]}"
    body = chat(gw, answer_mode="auto", session_id=session)
    content, o = body["choices"][0]["message"]["content"], body["omnirag"]
    assert o["answered_by"] == "extract" and o["fallback"] is True
    assert o["grounded"] is False and o["grounding_reason"] == "number 8001 is not in the cited sources"
    assert content.startswith("The model's answer did not match its sources; the closest passage, from [")
    assert "8001" not in content and o["quote"]["text"] in content and "8000" in o["quote"]["text"]
    assert _in_its_source(o["quote"], o["citations"])
    # The session keeps what the client was shown, not the model's wrong answer.
    stored = httpx.get(f"{gw}/v1/sessions/{session}", headers=AUTH, timeout=30).json()
    assert stored["messages"][-1] == {"role": "assistant", "content": content}


def test_auto_streams_one_answer_never_two_spliced(gw: str, upstream: tuple[ScriptedLLM, Answers]) -> None:
    upstream[1].script = Plain(WRONG, chunk_chars=3)
    deltas, finish, o = chat_stream(gw, answer_mode="auto")
    assert len(deltas) == 1, deltas  # held, checked, then the chosen answer once
    assert "8001" not in deltas[0] and deltas[0].startswith("The model's answer did not match")
    assert finish == "stop"
    assert o["fallback"] is True and o["answered_by"] == "extract" and o["grounded"] is False
    assert o["grounding_reason"] == "number 8001 is not in the cited sources"


@pytest.mark.parametrize("stream", [False, True])
def test_auto_keeps_a_right_answer(gw: str, upstream: tuple[ScriptedLLM, Answers], stream: bool) -> None:
    upstream[1].script = Plain(RIGHT, chunk_chars=4)
    if stream:
        deltas, _, o = chat_stream(gw, answer_mode="auto")
        content = "".join(deltas)
    else:
        body = chat(gw, answer_mode="auto")
        content, o = body["choices"][0]["message"]["content"], body["omnirag"]
    assert content == RIGHT
    assert o["answered_by"] == "model" and o["grounded"] is True and o["fallback"] is False
    assert o["grounding_reason"] is None and o["quote"] is None


def test_generate_streams_live_and_reports_the_verdict(
    gw: str, upstream: tuple[ScriptedLLM, Answers]
) -> None:
    upstream[1].script = Plain(WRONG, chunk_chars=3)
    deltas, _, o = chat_stream(gw, answer_mode="generate")
    assert len(deltas) > 5 and "".join(deltas) == WRONG  # live, as the model wrote it
    assert o["answer_mode"] == "generate" and o["answered_by"] == "model" and o["fallback"] is False
    assert o["grounded"] is False and o["grounding_reason"] == "number 8001 is not in the cited sources"


def test_the_loop_guard_cuts_a_looping_stream(gw: str, upstream: tuple[ScriptedLLM, Answers]) -> None:
    loop = (RIGHT + " ") * 80
    upstream[1].script = Plain(loop, chunk_chars=5)
    deltas, finish, o = chat_stream(gw, answer_mode="generate")
    shown = "".join(deltas)
    assert finish == "stop"
    assert shown.count(RIGHT) <= 3 < loop.count(RIGHT)
    assert o["grounded"] is False and o["grounding_reason"] == "repetition"
    # auto holds the draft: the loop is cut to one copy before anything is shown, and checked.
    deltas, _, o = chat_stream(gw, answer_mode="auto")
    assert deltas == [RIGHT]
    assert o["answered_by"] == "model" and o["grounded"] is True


def test_the_default_mode_is_the_setting_and_is_counted(
    gateway_factory: GatewayFactory, upstream: tuple[ScriptedLLM, Answers]
) -> None:
    upstream[1].script = Plain(WRONG)
    models = json.dumps([{"name": "plain", "base_url": upstream[0], "capabilities": ["text"]}])
    with gateway_factory(models=models, answer_mode="auto") as base:
        o = chat(base)["omnirag"]
        assert o["answer_mode"] == "auto" and o["fallback"] is True
        assert chat(base, answer_mode="generate")["omnirag"]["answered_by"] == "model"
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'omnirag_gateway_answers_total{answered_by="extract",grounded="false",mode="auto"} 1.0' in metrics
    assert (
        'omnirag_gateway_answers_total{answered_by="model",grounded="false",mode="generate"} 1.0' in metrics
    )


def test_answer_mode_is_not_passed_through(gw: str, upstream: tuple[ScriptedLLM, Answers]) -> None:
    upstream[1].script = Plain("Hello.")
    body = chat(gw, "Say hello.", rag=False, answer_mode="auto")
    assert "answer_mode" not in upstream[0].chat_requests[-1]
    assert body["omnirag"]["answer_mode"] is None and body["omnirag"]["grounded"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_auto_with_the_real_model_is_grounded_or_marked(gateway_url: str, stream: bool) -> None:
    """Whatever SmolLM2 says: the reply is the model's, checked and grounded, or the extract, marked
    as a fallback with the reason — in English and in Chinese."""
    for question in (QUESTION, "对话历史保存在哪里？"):
        if stream:
            deltas, _, o = chat_stream(gateway_url, question, answer_mode="auto", max_tokens=64)
            assert len(deltas) == 1
        else:
            o = chat(gateway_url, question, answer_mode="auto", max_tokens=64)["omnirag"]
        assert o["answer_mode"] == "auto"
        if o["answered_by"] == "model":
            assert o["grounded"] is True and o["fallback"] is False
        else:
            assert o["fallback"] is True and o["grounded"] is False and o["grounding_reason"]
            assert _in_its_source(o["quote"], o["citations"])
