"""Several models behind one gateway: the registry (GATEWAY_MODELS), GET /v1/models, the request's
``model`` routing to the right upstream, 404 model_not_found, per-key models, content parts choosing
a model that takes them, and the rewrite on its own model (GATEWAY_REWRITE_MODEL).

Two upstreams: the real llama.cpp server with SmolLM2 (``smol``, text and tools), and the scripted
OpenAI-compatible server (``omni``, standing for Qwen2.5-Omni: text, vision, audio, video), whose
recorded requests say what the gateway sent it. A third entry (``remote``) is never called: it shows
that the admin view hides a base URL's credentials.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from omnirag_harness.gateway_stack import AUTH, DEV_KEY, REPO
from omnirag_harness.scripted_llm import Plain, ScriptedLLM, scripted_llm
from PIL import Image, ImageDraw

from omnirag.core.errors import BadRequest, NotFound
from omnirag.gateway.auth import ApiKey
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.registry import ModelRegistry

OMNI_KEY = "omni-upstream-key-0123456789"
SMOL_ONLY = "smol-only-key-0123456789abcdef"
ADMIN = "models-admin-key-0123456789ab"
OMNI_ANSWER = "The omni model answers: port 8000."
# What the scripted omni model says when it is the rewrite model.
REWRITTEN = "Which port does the retriever listen on?"
# A minimal MP4 header (an ISO ftyp box): the gateway checks the container, the model decodes it.
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64


def models_json(llm_url: str, omni_url: str, **omni: Any) -> str:
    return json.dumps(
        [
            {
                "name": "smol",
                "base_url": llm_url,
                "upstream_model": "smollm2-135m-instruct",
                "capabilities": ["text", "tools"],
            },
            {
                "name": "omni",
                "base_url": omni_url,
                "upstream_model": "qwen2.5-omni-3b",
                "api_key": OMNI_KEY,
                "capabilities": ["text", "vision", "audio", "video"],
            }
            | omni,
            {
                "name": "remote",
                "base_url": "https://svc:s3cret-in-url@llm.example/v1",
                "capabilities": ["text"],
            },
        ]
    )


KEYS = json.dumps(
    [
        {"name": "smol-only", "key": SMOL_ONLY, "models": ["smol"]},
        {"name": "ops", "key": ADMIN, "admin": True},
    ]
)


@pytest.fixture(scope="module")
def omni() -> Iterator[ScriptedLLM]:
    def answer(body: dict[str, Any]) -> Plain:
        text = json.dumps(body["messages"])
        # The rewrite prompt asks for a standalone question; every other call gets the answer.
        return Plain(answer=REWRITTEN if "standalone" in text.lower() else OMNI_ANSWER, chunk_chars=7)

    with scripted_llm(answer, models=("qwen2.5-omni-3b",)) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(gateway_factory, llm_url: str, omni: ScriptedLLM) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with gateway_factory(
        models=models_json(llm_url, omni), default_model="smol", api_keys=KEYS, log_json=False
    ) as base:
        yield base


def client(base: str, key: str = DEV_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def png() -> bytes:
    image = Image.new("RGB", (300, 80), "white")
    ImageDraw.Draw(image).text((10, 30), "port 8000", fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this?"}, *parts]}]


# ------------------------------------------------------------------------------------ /v1/models


def test_models_lists_every_model_with_capabilities_and_the_default(gateway: str) -> None:
    listed = client(gateway).models.list().data
    ids = [m.id for m in listed]
    assert ids[:3] == ["smol", "omni", "remote"] and "all-MiniLM-L6-v2" in ids[3:]
    extra = {m.id: m.model_extra["omnirag"] for m in listed}
    assert extra["smol"] == {"capabilities": ["text", "tools"], "default": True}
    assert extra["omni"] == {"capabilities": ["text", "vision", "audio", "video"], "default": False}
    assert extra["all-MiniLM-L6-v2"] == {"capabilities": ["embeddings"], "default": False}
    assert {m.owned_by for m in listed[:3]} == {"omnirag"}


def test_a_key_sees_and_uses_only_its_models(gateway: str, omni: ScriptedLLM) -> None:
    ids = [m.id for m in client(gateway, SMOL_ONLY).models.list().data]
    assert ids[0] == "smol" and "omni" not in ids and "remote" not in ids
    before = len(omni.requests)
    # A model the key may not use is answered as one that does not exist: nothing to probe.
    with pytest.raises(openai.NotFoundError) as forbidden:
        client(gateway, SMOL_ONLY).chat.completions.create(
            model="omni", messages=[{"role": "user", "content": "hi"}], extra_body={"rag": False}
        )
    with pytest.raises(openai.NotFoundError) as unknown:
        client(gateway, SMOL_ONLY).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}], extra_body={"rag": False}
        )
    assert forbidden.value.code == unknown.value.code == "model_not_found"
    assert forbidden.value.message.replace("'omni'", "X") == unknown.value.message.replace("'nope'", "X")
    # An image with the model omitted: the vision model is not the key's, so smol reads it by OCR.
    r = client(gateway, SMOL_ONLY).chat.completions.create(
        model="omnirag",
        messages=ask({"type": "image_url", "image_url": {"url": data_url(png(), "image/png")}}),
        max_tokens=8,
        extra_body={"rag": False},
    )
    assert r.model == "smol" and len(omni.requests) == before


# ------------------------------------------------------------------------------------ routing


def test_model_routes_to_its_upstream_under_its_upstream_name(gateway: str, omni: ScriptedLLM) -> None:
    before = len(omni.requests)
    r = client(gateway).chat.completions.create(
        model="omni", messages=[{"role": "user", "content": "Say hello."}], extra_body={"rag": False}
    )
    assert r.model == "omni" and r.choices[0].message.content == OMNI_ANSWER
    sent, headers = omni.requests[-1], omni.headers[-1]
    assert len(omni.requests) == before + 1 and sent["model"] == "qwen2.5-omni-3b"
    assert headers["Authorization"] == f"Bearer {OMNI_KEY}"  # each model its own key
    # Streamed, every chunk names the entry that answered.
    chunks = list(
        client(gateway).chat.completions.create(
            model="omni",
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            extra_body={"rag": False},
        )
    )
    assert {c.model for c in chunks} == {"omni"}
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == OMNI_ANSWER
    # RAG on the omni model: its answer, the collection's citations.
    r = client(gateway).chat.completions.create(
        model="omni", messages=[{"role": "user", "content": "Which port does the gateway listen on?"}]
    )
    assert r.model == "omni" and r.choices[0].message.content == OMNI_ANSWER
    assert omni.requests[-1]["model"] == "qwen2.5-omni-3b"
    assert r.model_extra["omnirag"]["citations"]
    # smol is the real llama.cpp model: it answers, and the scripted server hears nothing of it.
    before = len(omni.requests)
    r = client(gateway).chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        extra_body={"rag": False},
    )
    assert r.model == "smol" and r.choices[0].message.content and len(omni.requests) == before
    r = client(gateway).chat.completions.create(
        model="omnirag",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        extra_body={"rag": False},
    )
    assert r.model == "smol" and len(omni.requests) == before  # "omnirag": the default


def test_an_unknown_model_is_openais_404(gateway: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert caught.value.type == "invalid_request_error" and "gpt-17" in caught.value.message
    r = httpx.post(
        gateway + "/v1/chat/completions",
        json={"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(
        gateway + "/v1/chat/completions",
        json={"model": "m" * 100_000, "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 404 and len(r.content) < 1000  # the name is not echoed whole


def test_an_image_goes_to_a_model_that_sees(gateway: str, omni: ScriptedLLM) -> None:
    image = data_url(png(), "image/png")
    r = client(gateway).chat.completions.create(
        model="omnirag",
        messages=ask({"type": "image_url", "image_url": {"url": image}}),
        extra_body={"rag": False},
    )
    assert r.model == "omni"
    parts = omni.requests[-1]["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": image}} in parts  # the image itself, no OCR


def test_audio_a_model_cannot_hear_is_a_400_naming_the_one_that_can(gateway: str) -> None:
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model="smol", messages=ask(audio), extra_body={"rag": False})
    assert caught.value.code == "unsupported_content"
    assert "'smol' cannot take audio" in caught.value.message and "omni" in caught.value.message


def test_audio_with_no_model_that_hears_is_a_400(gateway_factory, llm_url: str, omni: ScriptedLLM) -> None:  # type: ignore[no-untyped-def]
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"},
    }
    before = len(omni.requests)
    with (
        gateway_factory(models=models_json(llm_url, omni, capabilities=["text", "vision"])) as base,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client(base).chat.completions.create(model="omnirag", messages=ask(audio))
    assert caught.value.code == "unsupported_content" and "no model here takes it" in caught.value.message
    assert len(omni.requests) == before


def test_a_video_passes_through_to_a_model_that_watches(gateway: str, omni: ScriptedLLM) -> None:
    video = data_url(MP4, "video/mp4")
    r = client(gateway).chat.completions.create(
        model="omnirag",
        messages=ask({"type": "video_url", "video_url": {"url": video}}),
        extra_body={"rag": False},
    )
    assert r.model == "omni"
    assert {"type": "video_url", "video_url": {"url": video}} in omni.requests[-1]["messages"][-1]["content"]
    # With RAG too: the question is searched, the video goes with it to the model.
    question = [{"type": "text", "text": "Which port does the gateway listen on?"}]
    r = client(gateway).chat.completions.create(
        model="omnirag",
        messages=[
            {"role": "user", "content": [*question, {"type": "video_url", "video_url": {"url": video}}]}
        ],
    )
    assert r.model == "omni" and r.model_extra["omnirag"]["citations"]
    assert {"type": "video_url", "video_url": {"url": video}} in omni.requests[-1]["messages"][-1]["content"]
    # Named explicitly, a model that cannot watch refuses it, naming the one that can.
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(
            model="smol",
            messages=ask({"type": "video_url", "video_url": {"url": video}}),
            extra_body={"rag": False},
        )
    assert caught.value.code == "unsupported_content" and "omni" in caught.value.message


# ------------------------------------------------------------------------------------ rewrite


def test_the_rewrite_runs_on_the_rewrite_model(gateway_factory, llm_url: str, omni: ScriptedLLM) -> None:  # type: ignore[no-untyped-def]
    searches: list[dict[str, Any]] = []

    async def record_search(request: httpx.Request) -> None:
        if request.url.path.endswith("/search"):
            searches.append(json.loads(request.content))

    history = [
        {"role": "user", "content": "Which port does the gateway use?"},
        {"role": "assistant", "content": "The gateway listens on port 8000."},
        {"role": "user", "content": "And the retriever?"},
    ]
    with gateway_factory(
        models=models_json(llm_url, omni), default_model="smol", rewrite_model="omni"
    ) as base:
        gateway_factory.last_app.state.gateway.http.event_hooks["request"].append(record_search)
        before = len(omni.requests)
        r = client(base).chat.completions.create(model="smol", messages=history, max_tokens=16)
    # One call reached the omni model: the rewrite (the answer came from smol, the real model).
    assert len(omni.requests) == before + 1
    assert omni.requests[-1]["model"] == "qwen2.5-omni-3b"
    assert "And the retriever?" in json.dumps(omni.requests[-1]["messages"])
    assert r.model == "smol" and r.choices[0].message.content != OMNI_ANSWER
    assert r.model_extra["omnirag"]["rewritten_query"] == REWRITTEN
    assert searches[-1]["query"] == REWRITTEN


# ------------------------------------------------------------------------------------ admin view


def test_admin_status_lists_every_model_without_credentials(gateway: str) -> None:
    r = httpx.get(gateway + "/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert list(models) == ["smol", "omni", "remote"]
    assert models["remote"]["base_url"] == "https://svc:***@llm.example/v1"
    assert models["omni"]["upstream_model"] == "qwen2.5-omni-3b" and models["smol"]["default"] is True
    assert "s3cret-in-url" not in r.text and OMNI_KEY not in r.text


# ------------------------------------------------------------------------------------ the registry


def settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(_env_file=None, **overrides)


ANY_KEY = ApiKey("any", b"", frozenset({"*"}), 0, 0)


def test_without_a_list_one_model_comes_from_the_llm_settings() -> None:
    registry = ModelRegistry.from_settings(settings(llm_model="local", llm_vision=True, llm_tools=False))
    assert [m.name for m in registry.models] == ["local"]
    assert registry.default.capabilities == ("text", "vision") and registry.rewrite is registry.default


def test_a_models_file_wins_and_reads_each_key_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("file-key-0123\n")
    (tmp_path / "models.yaml").write_text(
        "- name: deepseek-r1\n"
        "  base_url: http://vllm-r1:8000/v1\n"
        "  upstream_model: ds-qwen3-8b\n"
        f"  api_key_file: {tmp_path / 'key'}\n"
        "  capabilities: [text, reasoning, tools]\n"
        "  thinking_off: null\n"
        "- name: qwen-omni\n"
        "  base_url: http://vllm-omni:8000/v1\n"
        "  capabilities: [text, vision, audio, video]\n"
        "  thinking_off: {enable_thinking: false}\n"
    )
    registry = ModelRegistry.from_settings(
        settings(
            models_file=tmp_path / "models.yaml", models='[{"name": "ignored"}]', rewrite_model="qwen-omni"
        )
    )
    r1 = registry.get("deepseek-r1")
    assert r1.served == "ds-qwen3-8b" and r1.api_key.get_secret_value() == "file-key-0123" and r1.reasoning
    assert registry.default is r1 and registry.rewrite.name == "qwen-omni"
    assert registry.rewrite.thinking_off == {"enable_thinking": False} and r1.thinking_off is None
    assert registry.choose(None, {"input_audio"}, ANY_KEY).name == "qwen-omni"
    assert registry.choose(None, {"image_url"}, ANY_KEY).name == "qwen-omni"
    assert registry.choose(None, set(), ANY_KEY).name == "deepseek-r1"
    with pytest.raises(NotFound) as caught:
        registry.choose("gpt-17", set(), ANY_KEY)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(BadRequest, match="models that take it: qwen-omni"):
        registry.choose("deepseek-r1", {"video_url"}, ANY_KEY)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": "[]"}, "non-empty list"),
        ({"models": "{not json"}, "not JSON"),
        ({"models": '[{"name": "a b", "base_url": "http://x/v1"}]'}, "model entry 1: name"),
        ({"models": '[{"name": "a", "base_url": "ftp://x"}]'}, "must be an http"),
        ({"models": '[{"name": "omnirag", "base_url": "http://x/v1"}]'}, "reserved"),
        ({"models": '[{"name": "a", "base_url": "http://x/v1", "languages": ["english"]}]'}, "languages"),
        ({"models": '[{"name": "a", "base_url": "http://x/v1", "capabilities": ["smell"]}]'}, "capabilities"),
        (
            {"models": '[{"name": "a", "base_url": "http://x/v1"}]', "default_model": "b"},
            "GATEWAY_DEFAULT_MODEL",
        ),
        (
            {"models": '[{"name": "a", "base_url": "http://x/v1"}]', "rewrite_model": "b"},
            "GATEWAY_REWRITE_MODEL",
        ),
        (
            {
                "models": '[{"name": "a", "base_url": "http://x/v1"}, {"name": "a", "base_url": "http://y/v1"}]'
            },
            "unique",
        ),
        (
            {"models": '[{"name": "a", "base_url": "http://x/v1", "api_key": "sk-secret-value", "rpm": 3}]'},
            "model entry 1: rpm",
        ),
    ],
)
def test_a_bad_model_list_stops_the_start_with_its_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        ModelRegistry.from_settings(settings(**overrides))
    assert "sk-secret-value" not in str(caught.value)


def test_a_models_file_that_is_not_yaml_is_named_without_its_content(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text('- name: a\n  api_key: "sk-secret-value\n  base_url: [\n')
    with pytest.raises(ValueError, match="is not YAML at line") as caught:
        ModelRegistry.from_settings(settings(models_file=bad))
    assert "sk-secret-value" not in str(caught.value)


def test_api_keys_name_their_models() -> None:
    from omnirag.gateway.auth import KeyStore

    store = KeyStore.load(
        inline=json.dumps([{"name": "a", "key": "a-key-0123456789abcdef", "models": ["omni"]}]),
        path=None,
        dev_key=None,
        default_rpm=0,
        default_tpm=0,
    )
    key = store.authenticate("a-key-0123456789abcdef")
    assert key.may_use("omni") and not key.may_use("smol")
    with pytest.raises(ValueError, match="bad API key entry"):
        KeyStore.load(
            inline=json.dumps([{"name": "b", "key": "b-key-0123456789abcdef", "models": "omni"}]),
            path=None,
            dev_key=None,
            default_rpm=0,
            default_tpm=0,
        )


def test_the_local_stack_lists_the_llama_cpp_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("local_stack", REPO / "scripts/local_stack.py")
    assert spec is not None and spec.loader is not None
    local_stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_stack)
    monkeypatch.chdir(tmp_path)
    for name in ("GATEWAY_MODELS", "GATEWAY_MODELS_FILE", "GATEWAY_DEFAULT_MODEL", "GATEWAY_REWRITE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    local_stack.ensure_env()
    local_stack.ensure_env()  # once only
    text = (tmp_path / ".env").read_text()
    assert text.count("GATEWAY_MODELS=") == 1 and text.count("GATEWAY_DEFAULT_MODEL=") == 1
    registry = ModelRegistry.from_settings(GatewaySettings())  # reads ./.env, as make run's gateway does
    assert [m.name for m in registry.models] == ["smollm2-135m-instruct"]
    assert registry.default.base_url == "http://127.0.0.1:6006/v1"
    assert registry.default.capabilities == ("text", "tools")


def test_the_start_up_log_lists_the_models(  # type: ignore[no-untyped-def]
    gateway_factory, llm_url: str, omni: ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="omnirag.gateway"),
        gateway_factory(models=models_json(llm_url, omni)),
    ):
        pass
    record = next(r for r in caplog.records if r.getMessage() == "chat models")
    listed = record.models  # type: ignore[attr-defined]
    assert [(m["name"], m["default"]) for m in listed] == [("smol", True), ("omni", False), ("remote", False)]
    assert "s3cret-in-url" not in repr(listed) and OMNI_KEY not in repr(listed)
