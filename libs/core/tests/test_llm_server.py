"""The local LLM (llama.cpp server, SmolLM2-135M-Instruct) through the official openai client.

`make test` installs llama-cpp-python and the model (`make llm`), so these run in CI; the gateway's
tests lean on the same server and on the tool-call shape checked here.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator

import pytest
from omnirag_harness.servers import llm_server, smollm2_model_path
from openai import OpenAI

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed; `make llm` (part of `make test`) installs it",
)

MODEL = "smollm2-135m-instruct"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client() -> Iterator[OpenAI]:
    # One thread: on 2 cores, two decoding threads collapse to a few tokens/s as soon as anything
    # else runs; one thread keeps ~20-40 tokens/s.
    with llm_server(threads=1) as base_url:
        assert base_url.endswith("/v1")
        yield OpenAI(base_url=base_url, api_key="unused", timeout=60)


def test_model_file_ships_in_the_package() -> None:
    path = smollm2_model_path()
    assert path.endswith(".gguf")
    assert os.path.getsize(path) > 50_000_000


def test_models_lists_the_alias(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_short_completion(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in one short sentence."}],
        temperature=0,
        max_tokens=16,
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content and choice.message.content.strip()
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 16


def test_streaming_completion(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],
        temperature=0,
        max_tokens=12,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_named_tool_choice_returns_openai_tool_calls(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
        temperature=0,
        max_tokens=40,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    # A grammar built from the JSON schema holds the arguments to it.
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_named_tool_choice_streams_tool_call_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    arguments = ""
    names = set()
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            if tc.function and tc.function.name:
                names.add(tc.function.name)
            if tc.function and tc.function.arguments:
                arguments += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    # llama-cpp-python repeats id and name in every delta (OpenAI sends them once): a client that
    # concatenates deltas, as the openai SDK's stream helper does, needs them sent once.
    assert names == {"get_weather"}
    assert isinstance(json.loads(arguments)["city"], str)
