"""The UI over the running stack through ``gradio_client``, the way a script drives a Gradio app:
questions get streamed answers with their sources, follow-ups show the rewritten question,
uploads are watched until the knowledge base serves them, and every gateway failure (401, 403,
429 with its wait, 5xx, degraded answers, a gateway that is down) comes back as a sentence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from gradio_client import Client, handle_file
from omnirag_harness.scripted_llm import ScriptedLLM
from omnirag_harness.servers import metric_value
from omnirag_harness.ui_stack import AUTH, LOCAL, REASONED_ANSWER, REASONER

EMPTY = {"current": None, "conversations": [], "meta": {}}
# The chooser's first entry: the gateway's "choose for me" name, labelled with its default.
AUTO = ["Automatic (smollm2-135m-instruct, or a model that takes the attachments)", "omnirag"]
DOWN = "http://127.0.0.1:9"


@contextmanager
def client(ui: str, **headers: str) -> Iterator[Client]:
    c = Client(
        ui + "/", verbose=False, download_files=False, analytics_enabled=False, headers=headers or None
    )
    try:
        yield c
    finally:
        c.close()


def text_of(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")


def answers(chat: list[dict[str, Any]]) -> list[str]:
    return [text_of(m) for m in chat if m["role"] == "assistant"]


def ask(c: Client, store: Any, text: str, collection: str | None = "docs") -> tuple[list[Any], Any]:
    """Submit a question; return every streamed update and the final outputs
    (chatbot, textbox, notice, conversations, stored conversations)."""
    job = c.submit({"text": text, "files": []}, collection, store, api_name="/ask")
    updates = list(job)
    return updates, job.result()


def test_a_question_gets_a_streamed_answer_with_sources(ui_url: str, gateway_url: str) -> None:
    with client(ui_url) as c:
        collections, models, conversations, chat, notice, store = c.predict(EMPTY, api_name="/load")
        assert collections["value"] == "docs" and ["docs", "docs"] in collections["choices"]
        # The chat models the key may use (the embedder's model is not one) after "automatic",
        # which a new conversation starts with.
        assert models["choices"] == [AUTO, [LOCAL, LOCAL]] and models["value"] == "omnirag"
        assert chat == [] and notice == ""
        session_id = store["current"]
        assert session_id.startswith("ui-") and conversations["value"] == session_id

        question = "Which port does the gateway listen on?"
        updates, (chat, _, notice, conversations, store) = ask(c, store, question)
        # Streamed: the answer grew over several updates before its sources arrived at the end.
        partial = [answers(u[0])[-1] for u in updates if answers(u[0])]
        growing = [p for p in partial if p and "omnirag-sources" not in p]
        assert len(set(growing)) >= 3, partial
        final = answers(chat)[-1]
        assert "omnirag-sources" in final and "[1]" in final
        # The model the gateway chose, beside the sources: its name, not "omnirag".
        assert f"Answered by: <code>{LOCAL}</code>" in final
        assert "getting-started.md" in final and "Getting started with omnirag" in final
        assert "score" in final and "port 8000" in final  # the snippet of the right source
        assert notice == ""
        assert conversations["choices"][0] == ["Which port does the gateway listen on?", session_id]

        # The history lives in the gateway, under the conversation's id.
        stored = httpx.get(f"{gateway_url}/v1/sessions/{session_id}", headers=AUTH).json()["messages"]
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert stored[0]["content"] == "Which port does the gateway listen on?"
        assert stored[1]["content"] in final

        # A follow-up is rewritten by the gateway; the page says what was searched for.
        _, (chat, *_rest, store) = ask(c, store, "And what about the retriever?")
        assert "Searched for" in answers(chat)[-1]
        assert len(httpx.get(f"{gateway_url}/v1/sessions/{session_id}", headers=AUTH).json()["messages"]) == 4
        # Sources are kept in the browser for every answer, to show again after a reload.
        assert len(store["meta"][session_id]) == 2

        # A reload: the conversation comes back from the gateway, with what the browser kept
        # about each answer (its sources, the rewritten question).
        _, models, _, chat, _, _ = c.predict(store, api_name="/load")
        assert models["value"] == "omnirag"
        assert len(chat) == 4
        first, second = answers(chat)
        assert "omnirag-sources" in first and "getting-started.md" in first
        assert "Searched for" in second

    metrics = httpx.get(ui_url + "/metrics").text
    assert metric_value(metrics, "omnirag_ui_answers_total", 'outcome="ok"') >= 2
    assert metric_value(metrics, "omnirag_ui_time_to_first_token_seconds_count") >= 2


def test_the_chosen_model_answers_and_its_thinking_streams_apart_from_the_answer(
    two_models: tuple[str, str, ScriptedLLM],
) -> None:
    ui, gateway, upstream = two_models
    with client(ui) as c:
        _, models, _, _, notice, store = c.predict(EMPTY, api_name="/load")
        assert models["choices"] == [AUTO, [LOCAL, LOCAL], [f"{REASONER} (thinks)", REASONER]]
        assert models["value"] == "omnirag" and notice == ""
        # The choice is kept with the open conversation.
        store = c.predict(REASONER, store, api_name="/choose_model")
        session_id = store["current"]
        assert store["conversations"][0]["model"] == REASONER

        job = c.submit(
            {"text": "Which port does the gateway listen on?", "files": []},
            "docs",
            store,
            REASONER,
            api_name="/ask",
        )
        updates = list(job)
        chat, _, notice, _, store = job.result()
    # The thinking streamed in, growing, in its collapsed section, before any of the answer's text.
    partial = [answers(u[0])[-1] for u in updates if answers(u[0])]
    first_text = next(i for i, p in enumerate(partial) if "</details>\n\n" in p)
    thinking = [p for p in partial[:first_text] if "omnirag-thinking" in p]
    assert len(set(thinking)) >= 3, partial
    assert all(
        p.startswith('<details class="omnirag-thinking"><summary>Thinking…</summary>') for p in thinking
    )
    assert all("Thinking…" not in p for p in partial[first_text:])
    final = answers(chat)[-1]
    section, text, block = final.split("\n\n")
    assert section.startswith('<details class="omnirag-thinking"><summary>Thinking</summary>')
    assert "getting-started guide lists" in section and "port 8000" not in section
    assert text == REASONED_ANSWER
    assert f"Answered by: <code>{REASONER}</code>" in block and "omnirag-sources" in block
    assert notice == ""
    # The gateway asked the reasoning model by its upstream name; it stored the answer alone.
    assert upstream.chat_requests[-1]["model"] == "ds-qwen3-8b"
    stored = httpx.get(f"{gateway}/v1/sessions/{session_id}", headers=AUTH).json()["messages"]
    assert [m["content"] for m in stored] == ["Which port does the gateway listen on?", REASONED_ANSWER]
    assert store["conversations"][0]["model"] == REASONER
    assert next(iter(store["meta"][session_id].values()))["model"] == REASONER

    # A reload brings the conversation's model back; the thinking is not kept, the model line is.
    with client(ui) as c:
        _, models, _, chat, _, _ = c.predict(store, api_name="/load")
        # "Automatic" again: the conversation keeps no model of its own, the gateway chooses.
        back = c.predict("omnirag", store, api_name="/choose_model")
    assert models["value"] == REASONER
    reloaded = answers(chat)[-1]
    assert "omnirag-thinking" not in reloaded and f"Answered by: <code>{REASONER}</code>" in reloaded
    assert store["conversations"][0]["model"] == REASONER and back["conversations"][0]["model"] is None


def test_chinese_browsers_get_chinese_text(ui_url: str) -> None:
    with client(ui_url, **{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}) as c:
        store = c.predict(EMPTY, api_name="/load")[-1]
        _, (chat, *_rest) = ask(c, store, "网关监听哪个端口？")
        final = answers(chat)[-1]
        assert "来源" in final and "相关度" in final, final


def test_an_upload_is_watched_until_it_is_searchable(ui_url: str, tmp_path: Path) -> None:
    doc = tmp_path / "quokka-committee.md"
    doc.write_text("# Committees\n\nThe quokka committee meets every second Thursday in the glasshouse.\n")
    with client(ui_url) as c:
        job = c.submit([handle_file(str(doc))], "ui-e2e", api_name="/upload")
        statuses = [u[0] for u in job]
        status, collections, files = job.result()
        assert "searchable in “ui-e2e” (chunks: 1)" in status, statuses
        assert any("queued" in s for s in statuses)
        assert collections["value"] == "ui-e2e" and ["ui-e2e", "ui-e2e"] in collections["choices"]
        assert files is None

        store = c.predict(EMPTY, api_name="/load")[-1]
        _, (chat, *_rest) = ask(c, store, "When does the quokka committee meet?", collection="ui-e2e")
        final = answers(chat)[-1]
        assert "upload/quokka-committee.md" in final and "glasshouse" in final


def test_a_document_attached_to_a_question_is_ingested_then_asked_about(ui_url: str, tmp_path: Path) -> None:
    doc = tmp_path / "bicycle-policy.md"
    doc.write_text("# Bicycles\n\nBicycles are parked in the blue cage under the north stairwell.\n")
    with client(ui_url) as c:
        store = c.predict(EMPTY, api_name="/load")[-1]
        message = {"text": "Where are bicycles parked?", "files": [handle_file(str(doc))]}
        job = c.submit(message, "ui-attached", store, api_name="/ask")
        updates = list(job)
        chat, _, notice, _, store = job.result()
    texts = [text_of(m) for m in chat]
    # The question with its file, the ingest progress, then the answer from the new document.
    assert chat[0]["role"] == "user" and any(p.get("type") == "file" for p in chat[0]["content"])
    assert "bicycle-policy.md: searchable in “ui-attached” (chunks: 1)" in texts[1]
    assert any("queued" in text_of(m) for u in updates for m in u[0] if m["role"] == "assistant")
    assert "upload/bicycle-policy.md" in texts[2] and "blue cage" in texts[2]
    assert notice == ""
    assert store["conversations"][0]["collection"] == "ui-attached"


OTHER_KEY = "ui-other-team-key-0123456789"
TINY_KEY = "ui-tiny-budget-key-0123456789"
KEYS = json.dumps(
    [
        {"name": "other-team", "key": OTHER_KEY, "collections": ["other"]},
        {"name": "tiny", "key": TINY_KEY, "collections": ["docs"], "rpm": 1},
    ]
)


def test_refusals_are_sentences_and_the_page_stays_usable(gateway_factory, ui_factory) -> None:  # type: ignore[no-untyped-def]
    with gateway_factory(api_keys=KEYS) as gateway:
        with ui_factory(gateway_url=gateway, api_key="not-a-valid-key-0123456789") as ui, client(ui) as c:
            _, _, _, _, notice, store = c.predict(EMPTY, api_name="/load")
            assert "refused the UI's API key (401)" in notice and "UI_API_KEY" in notice
            _, (chat, box, notice, *_rest) = ask(c, store, "Which port does the gateway listen on?")
            assert "(401)" in answers(chat)[-1] and "(401)" in notice
            assert box["interactive"] is True  # the box is given back
            assert "Traceback" not in json.dumps(chat)

        with ui_factory(gateway_url=gateway, api_key=OTHER_KEY) as ui, client(ui) as c:
            collections, _, _, _, notice, store = c.predict(EMPTY, api_name="/load")
            assert collections["choices"] == [] and "may not read any knowledge base" in notice
            _, (chat, _, notice, *_rest) = ask(c, store, "Which port does the gateway listen on?")
            assert "Not allowed (403)" in notice and "collection" in notice

        with ui_factory(gateway_url=gateway, api_key=TINY_KEY) as ui, client(ui) as c:
            store = c.predict(EMPTY, api_name="/load")[-1]  # the key's one request this minute
            notices = []
            for _ in range(2):  # two tries, in case the minute turned in between
                _, (chat, _, notice, *_rest) = ask(c, store, "Which port does the gateway listen on?")
                notices.append(notice)
                if "(429)" in notice:
                    break
            assert "Too many requests (429)" in notices[-1] and "Please wait " in notices[-1], notices
            wait = int(notices[-1].split("Please wait ")[1].split(" s")[0])
            assert 1 <= wait <= 61


def test_gateway_failures_are_sentences(gateway_factory, ui_factory) -> None:  # type: ignore[no-untyped-def]
    # The LLM is down: the gateway answers 502, the page says so.
    with (
        gateway_factory(llm_base_url=DOWN + "/v1", llm_connect_retries=0) as gateway,
        ui_factory(gateway_url=gateway) as ui,
        client(ui) as c,
    ):
        store = c.predict(EMPTY, api_name="/load")[-1]
        _, (chat, _, notice, *_rest) = ask(c, store, "Which port does the gateway listen on?")
        assert "could not answer (502)" in notice and "try again" in notice

    # The retriever is down: an answer without sources, and a visible notice that says why.
    with (
        gateway_factory(retriever_url=DOWN) as gateway,
        ui_factory(gateway_url=gateway) as ui,
        client(ui) as c,
    ):
        _, _, _, _, notice, store = c.predict(EMPTY, api_name="/load")
        assert "(502)" in notice  # the collections cannot be listed either
        _, (chat, _, notice, *_rest) = ask(c, store, "Which port does the gateway listen on?")
        final = answers(chat)[-1]
        assert "omnirag-degraded" in final and "knowledge base could not be searched" in final
        assert "omnirag-degraded" in notice

    # The gateway itself is gone: not ready, and the page says where it looked.
    with ui_factory(gateway_url=DOWN, ready_path="/healthz") as ui, client(ui) as c:
        ready = httpx.get(ui + "/readyz")
        assert ready.status_code == 503 and not ready.json()["checks"]["gateway"]["ok"]
        notice = c.predict(EMPTY, api_name="/load")[4]
        assert "cannot be reached" in notice and DOWN in notice
        assert httpx.get(ui + "/").status_code == 200
