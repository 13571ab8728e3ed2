"""End to end over the real stack: Redis, embedder, the example knowledge base, retriever, the local
SmolLM2 through llama.cpp, and the gateway — driven by the official ``openai`` client and LangChain."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from omnirag_harness.gateway_stack import AUTH, DEV_KEY
from omnirag_harness.servers import metric_value


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=DEV_KEY, max_retries=0, timeout=120)


def test_streamed_rag_answer_cites_the_right_document(gateway_url: str) -> None:
    stream = client(gateway_url).chat.completions.create(
        model="omnirag",
        messages=[{"role": "user", "content": "Which port does the gateway listen on?"}],
        stream=True,
        max_tokens=60,
        extra_body={"collection": "docs"},
    )
    text, tail = "", None
    pieces = 0
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            pieces += bool(choice.delta.content)
        extra = (chunk.model_extra or {}).get("omnirag")
        if extra is not None:
            tail = extra
    assert pieces >= 3, "the answer must arrive token by token, not in one piece"
    assert text.strip()
    assert tail is not None, "the last chunk before [DONE] carries the omnirag object"
    sources = [c["source"] for c in tail["citations"]]
    assert sources and sources[0].endswith("getting-started.md"), sources
    assert tail["rewritten_query"] is None and tail["degraded"] == []
    first = tail["citations"][0]
    assert {"id", "source", "title", "score", "snippet"} <= set(first)
    assert "8000" in " ".join(c["snippet"] for c in tail["citations"]) or "8000" in text


def test_sse_framing_is_exact(gateway_url: str) -> None:
    body = {
        "model": "omnirag",
        "messages": [{"role": "user", "content": "Which port does the embedder listen on?"}],
        "stream": True,
        "max_tokens": 20,
    }
    with httpx.stream(
        "POST", gateway_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    # A slow first token (a loaded machine) brings keep-alive comments: exact SSE comments, nothing else.
    comments = [e for e in events if e.startswith(":")]
    assert all(e == ": keep-alive" for e in comments), comments
    events = [e for e in events if not e.startswith(":")]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[-1]["choices"] == [] and "omnirag" in payloads[-1]
    assert payloads[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_follow_up_is_rewritten_with_the_session_history(gateway_url: str) -> None:
    c = client(gateway_url)
    session = f"s-{uuid.uuid4().hex[:10]}"
    first = c.chat.completions.create(
        model="omnirag",
        messages=[{"role": "user", "content": "Which port does the embedder listen on?"}],
        max_tokens=40,
        extra_body={"session_id": session},
    )
    assert first.model_extra["omnirag"]["rewritten_query"] is None
    follow = c.chat.completions.create(
        model="omnirag",
        messages=[{"role": "user", "content": "And what does it serve?"}],
        max_tokens=40,
        extra_body={"session_id": session},
    )
    meta = follow.model_extra["omnirag"]
    rewritten = meta["rewritten_query"]
    assert rewritten and rewritten != "And what does it serve?"
    assert meta["session_id"] == session
    stored = httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0]["content"] == "Which port does the embedder listen on?"
    metrics = httpx.get(gateway_url + "/metrics").text
    assert metric_value(metrics, "omnirag_gateway_rewrites_total", 'outcome="skipped"') >= 1
    assert httpx.delete(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).json()["deleted"] is True
    assert httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).status_code == 404


def test_rewrite_gets_the_history_and_its_output_is_the_retrieval_query(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    """Watch the gateway's real outgoing requests: the rewrite call carries the earlier turns, and
    the retriever is asked exactly the rewritten question."""
    llm_bodies: list[dict] = []
    searches: list[dict] = []

    async def record_llm(request: httpx.Request) -> None:
        llm_bodies.append(json.loads(request.content))

    async def record_search(request: httpx.Request) -> None:
        if request.url.path.endswith("/search"):
            searches.append(json.loads(request.content))

    with gateway_factory() as base:
        gw = gateway_factory.last_app.state.gateway
        gw.llm_http.event_hooks["request"].append(record_llm)
        gw.http.event_hooks["request"].append(record_search)
        history = [
            {"role": "user", "content": "Which port does the retriever listen on?"},
            {"role": "assistant", "content": "The retriever listens on port 8002 [1]."},
            {"role": "user", "content": "How do I change it?"},
        ]
        r = client(base).chat.completions.create(model="omnirag", messages=history, max_tokens=30)
    rewritten = r.model_extra["omnirag"]["rewritten_query"]
    assert rewritten, "a follow-up with history is rewritten"
    rewrite_call = next(b for b in llm_bodies if "standalone question" in json.dumps(b["messages"]))
    sent = json.dumps(rewrite_call["messages"])
    assert "Which port does the retriever listen on?" in sent and "port 8002" in sent
    assert [s["query"] for s in searches] == [rewritten]
    # Both calls carry their token cap under the name llama.cpp reads (it ignores max_completion_tokens).
    answer_call = llm_bodies[-1]
    assert rewrite_call["max_tokens"] == 64 and answer_call["max_tokens"] == 30
    assert "max_completion_tokens" not in answer_call


def test_langchain_chat_openai_works_unchanged(gateway_url: str) -> None:
    llm = ChatOpenAI(
        model="omnirag",
        base_url=gateway_url + "/v1",
        api_key=DEV_KEY,
        max_tokens=40,
        max_retries=0,
        temperature=0,
    )
    answer = llm.invoke("Which port does the gateway listen on?")
    assert isinstance(answer.content, str) and answer.content.strip()
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Which port does the retriever listen on?"))
    assert streamed.strip()


def test_nothing_relevant_says_so(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    with gateway_factory(relevance_threshold=0.99) as base:
        r = client(base).chat.completions.create(
            model="omnirag", messages=[{"role": "user", "content": "What is the capital of Mongolia?"}]
        )
    assert "could not find" in r.choices[0].message.content
    assert r.model_extra["omnirag"]["citations"] == []


def test_pass_through_with_a_forced_tool_call(gateway_url: str) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    c = client(gateway_url)
    kwargs = {
        "model": "omnirag",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
        "extra_body": {"rag": False},
    }
    r = c.chat.completions.create(**kwargs)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    names, ids, args = [], [], ""
    for chunk in c.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                if tc.id:
                    ids.append(tc.id)
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                if tc.function and tc.function.arguments:
                    args += tc.function.arguments
    # As OpenAI streams them: id and name once, then the arguments in pieces.
    assert names == ["get_weather"] and len(ids) == 1
    assert "city" in json.loads(args)
    # LangChain's accumulator must rebuild the same call from the stream.
    llm = ChatOpenAI(
        model="omnirag", base_url=gateway_url + "/v1", api_key=DEV_KEY, max_retries=0
    ).bind_tools(tools, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    merged = None
    for piece in llm.stream("What is the weather in Paris?", extra_body={"rag": False}, max_tokens=40):
        merged = piece if merged is None else merged + piece
    assert merged is not None and merged.tool_calls[0]["name"] == "get_weather"
    assert "city" in merged.tool_calls[0]["args"]


def test_bad_requests_get_clear_errors(gateway_url: str) -> None:
    post = lambda body, **kw: httpx.post(gateway_url + "/v1/chat/completions", json=body, timeout=30, **kw)  # noqa: E731
    assert post({"messages": [{"role": "user", "content": "hi"}]}).status_code == 401
    r = post(
        {"messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": "Bearer wrong-key-123"}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert post({"messages": []}, headers=AUTH).status_code == 422
    assert post({"messages": [{"role": "wizard", "content": "hi"}]}, headers=AUTH).status_code == 422
    r = post({"messages": [{"role": "user", "content": "hi"}], "collection": "nope"}, headers=AUTH)
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    many = [{"role": "user", "content": "x"}] * 101
    assert post({"messages": many}, headers=AUTH).status_code == 422
    r = post({"messages": [{"role": "user", "content": "x" * 40_000}]}, headers=AUTH)
    assert r.status_code in (413, 422)


@pytest.mark.parametrize("stream", [False, True])
def test_audio_is_refused_by_a_text_only_model(gateway_url: str, stream: bool) -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is said here?"},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            }
        ],
        "stream": stream,
    }
    r = httpx.post(gateway_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400
    assert "audio" in r.json()["error"]["message"]


def test_streamed_pass_through_relays_the_llm_with_the_gateway_model_name(gateway_url: str) -> None:
    chunks = list(
        client(gateway_url).chat.completions.create(
            model="omnirag",  # the gateway chooses; an unknown name is a 404 (test_models.py)
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=12,
            stream=True,
            extra_body={"rag": False},
        )
    )
    assert chunks and {c.model for c in chunks} == {"smollm2-135m-instruct"}
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices).strip()
    tail = chunks[-1].model_extra["omnirag"]
    assert tail["citations"] == [] and tail["degraded"] == []


def test_body_errors_keep_their_statuses_order_and_shape(gateway_url: str) -> None:
    url = gateway_url + "/v1/chat/completions"
    json_type = {"content-type": "application/json"}
    # Malformed JSON is refused before the key is looked at; a well-formed body's fields only after.
    r = httpx.post(url, content=b'{"messages": [', headers=json_type, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["details"][0]["type"] == "json_invalid"
    assert httpx.post(url, json={"messages": []}, timeout=30).status_code == 401
    hot = {"messages": [{"role": "user", "content": "hi"}], "temperature": 5}
    r = httpx.post(url, json=hot, headers=AUTH, timeout=30)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["details"][0]["loc"] == ["body", "temperature"]
    assert error["message"].startswith("temperature:")
    r = httpx.post(url, headers=AUTH, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["message"] == "body: Field required"
    # A body not declared as JSON is not read as JSON.
    plain = {**AUTH, "content-type": "text/plain"}
    body = b'{"messages": [{"role": "user", "content": "hi"}]}'
    assert httpx.post(url, content=body, headers=plain, timeout=30).status_code == 422
    # The OpenAPI document still describes the request and the key headers.
    op = httpx.get(gateway_url + "/openapi.json", timeout=30).json()["paths"]["/v1/chat/completions"]["post"]
    assert "messages" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {p["name"] for p in op["parameters"]} == {"authorization", "x-api-key"}


@pytest.mark.parametrize("rag", [True, False])
def test_a_streamed_turn_is_stored_before_done(gateway_factory, rag: bool) -> None:  # type: ignore[no-untyped-def]
    """A client may read the session, or send its follow-up, the moment it sees ``[DONE]``: the
    turn must already be stored. Storing is slowed down so that a gateway that stored it after
    ``[DONE]`` would be caught."""
    session = f"s-{uuid.uuid4().hex[:10]}"
    body = {
        "model": "omnirag",
        "messages": [{"role": "user", "content": "Which port does the gateway listen on?"}],
        "stream": True,
        "max_tokens": 12,
        "session_id": session,
        "rag": rag,
    }
    with gateway_factory() as base:
        history = gateway_factory.last_app.state.gateway.history
        append = history.append

        async def slow_append(*args, **kwargs):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.5)
            return await append(*args, **kwargs)

        history.append = slow_append
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    # Asked while the stream is still open, as a client that stops reading at [DONE].
                    got = httpx.get(f"{base}/v1/sessions/{session}", headers=AUTH)
                    break
            else:
                pytest.fail("the stream ended without [DONE]")
    assert got.status_code == 200, got.text
    assert [m["role"] for m in got.json()["messages"]] == ["user", "assistant"]
