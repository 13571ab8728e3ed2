"""The UI's reading of a streamed answer, over real HTTP: ``GatewayClient.chat`` against the scripted
OpenAI-compatible upstream (omnirag_harness.scripted_llm), which replays a reasoning model's
stream as the gateway passes it on (``delta.reasoning_content`` before ``content``), cut into
deltas of a few characters. The scripted server drives the mechanism only: what the UI does with
each chunk is the code under test. The whole path through the gateway runs in test_browser.py."""

from __future__ import annotations

from dataclasses import replace

from omnirag_harness.scripted_llm import Plain, ReasoningField, scripted_llm
from pydantic import SecretStr

from omnirag.ui.config import UiSettings
from omnirag.ui.gateway import Answer, GatewayClient

REASONING = "The user asks about ports. The docs say 8000 <b>for</b> the gateway."
ANSWER = "The gateway listens on port 8000."


async def answers(upstream: str, model: str | None = None) -> list[Answer]:
    """Every state the answer went through, as the page saw it."""
    settings = UiSettings(gateway_url=upstream.removesuffix("/v1"), api_key=SecretStr("k"), log_json=False)
    client = GatewayClient(settings)
    await client.open()
    try:
        stream = client.chat("Which port?", session_id="ui-1", collection="docs", model=model)
        return [replace(a) async for a in stream]
    finally:
        await client.close()


async def test_reasoning_deltas_stream_apart_from_the_answer_and_first() -> None:
    script = ReasoningField(reasoning=REASONING, answer=ANSWER, field="reasoning_content", chunk_chars=3)
    with scripted_llm(script, models=("deepseek-r1",)) as upstream:
        seen = await answers(upstream, model="deepseek-r1")
        sent = upstream.chat_requests[-1]

    final = seen[-1]
    assert final.done and final.reasoning == REASONING and final.text == ANSWER
    assert final.model == "deepseek-r1"
    # Streamed as it came: the thinking grew over many updates, all before the first answer text,
    # and never leaked into it.
    thinking = [a for a in seen if a.reasoning and not a.text]
    assert len(thinking) >= len(REASONING) // 3
    assert [a.reasoning for a in thinking] == sorted((a.reasoning for a in thinking), key=len)
    assert all(REASONING.startswith(a.reasoning) for a in thinking)
    texts = [a for a in seen if a.text]
    assert texts and all(a.reasoning == REASONING for a in texts)
    assert all("ports" not in a.text for a in seen)
    # The chosen model is what the request named; only the question travels, no thinking.
    assert sent["model"] == "deepseek-r1"
    assert sent["messages"] == [{"role": "user", "content": "Which port?"}]


async def test_without_a_choice_the_gateway_chooses() -> None:
    # "omnirag" is the gateway's name for "choose for me" (its default, or a model that takes the
    # attachments); which model that was comes back in the chunks (test_page.py, through a gateway).
    with scripted_llm(Plain(answer=ANSWER, chunk_chars=5), models=("llama-local",)) as upstream:
        seen = await answers(upstream)
        sent = upstream.chat_requests[-1]
    assert sent["model"] == "omnirag"
    assert seen[-1].text == ANSWER and seen[-1].reasoning == ""


async def test_the_newer_vllm_reasoning_field_is_read_too() -> None:
    script = ReasoningField(reasoning=REASONING, answer=ANSWER, field="reasoning", chunk_chars=7)
    with scripted_llm(script, models=("r1",)) as upstream:
        seen = await answers(upstream, model="r1")
    assert seen[-1].reasoning == REASONING and seen[-1].text == ANSWER
