"""Malformed text gets a clear 4xx, never a 500: a lone UTF-16 surrogate (JSON "\\ud800" without its
pair) is no character, and no UTF-8 encoder on the way (Redis, the LLM call, the answer's JSON) can
take it."""

from __future__ import annotations

import httpx
import pytest
from omnirag_harness.gateway_stack import AUTH

# Built by hand: json.dumps and the clients escape a lone surrogate exactly like this.
LONE = '{"messages": [{"role": "user", "content": "Which port does the gateway use? \\ud800"}]'


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("rag", [True, False])
def test_lone_surrogate_in_a_question_is_400_invalid_text(gateway_url: str, rag: bool, stream: bool) -> None:
    body = LONE + f', "rag": {str(rag).lower()}, "stream": {str(stream).lower()}, "max_tokens": 4}}'
    r = httpx.post(
        gateway_url + "/v1/chat/completions",
        content=body.encode(),
        headers=AUTH | {"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_text"


@pytest.mark.parametrize(
    "where",
    [
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a \\udfff b"}]}]}',
        '{"messages": [{"role": "user", "content": "hi"}], "session_id": "s\\ud800"}',
        '{"messages": [{"role": "user", "content": "hi"}], "filter": {"\\ud800": "x"}}',
    ],
)
def test_lone_surrogate_anywhere_in_the_body_is_refused(gateway_url: str, where: str) -> None:
    r = httpx.post(
        gateway_url + "/v1/chat/completions",
        content=where.encode(),
        headers=AUTH | {"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_text", r.text


def test_a_surrogate_pair_is_text_and_answered(gateway_url: str) -> None:
    # "\ud83d\ude00" is one character (an emoji), which orjson reads: it must not be refused.
    body = (
        '{"messages": [{"role": "user", "content": "Which port does the gateway use? \\ud83d\\ude00"}],'
        ' "max_tokens": 4}'
    )
    r = httpx.post(
        gateway_url + "/v1/chat/completions",
        content=body.encode(),
        headers=AUTH | {"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def test_lone_surrogate_in_an_uploaded_text_is_a_4xx(gateway_url: str) -> None:
    r = httpx.post(
        gateway_url + "/v1/collections/docs/documents",
        content=b'{"text": "notes \\ud800 more", "source": "notes/surrogate"}',
        headers=AUTH | {"content-type": "application/json"},
        timeout=30,
    )
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize("fallback", [False, True])
def test_a_chat_body_nested_past_the_bound_is_400_too_deeply_nested(gateway_url: str, fallback: bool) -> None:
    # 100 levels: under orjson's 1024 and the stdlib's recursion limit, so only the route's own
    # bound refuses it. NaN sends the body down the stdlib fallback, which must be bounded too.
    deep = "[" * 100 + "]" * 100
    extra = ', "temperature": NaN' if fallback else ""
    body = f'{{"messages": [{{"role": "user", "content": "hi"}}], "metadata": {deep}{extra}}}'
    r = httpx.post(
        gateway_url + "/v1/chat/completions",
        content=body.encode(),
        headers=AUTH | {"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "too_deeply_nested"
