"""The page in a real headless Chromium (Debian's, driven by playwright) over the running stack:
ask and watch the answer stream in with its sources, rate it, ask about a picture, upload a
document, keep several conversations across a reload (in Chinese), and see a readable error when
the gateway refuses the key; log in through a real OpenID Connect provider, chat as that user,
list and remove one's own uploads, log out. Screenshots go to tests/artifacts/ for people to look at."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from omnirag_harness.gateway_stack import GatewayFactory
from omnirag_harness.scripted_llm import Plain, ScriptedLLM, scripted_llm
from omnirag_harness.ui_stack import AUTH, LOCAL, REASONED_ANSWER, REASONER, REASONING, UiFactory
from PIL import Image, ImageDraw, ImageFont
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from omnirag.ui.login import user_id

CHROMIUM = os.environ.get("OMNIRAG_TEST_CHROMIUM", "/usr/bin/chromium")
# Debian's chromium: never let a test tool download its own browser (CI has no route to one).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSWER_SECONDS = 90_000  # ms; a 1-thread CPU model on a busy machine
ARTIFACTS_ON_TIMEOUT = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def browser(gateway_url: str) -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop running in this thread while it is open: start it
    # after the stack (whose setup calls asyncio.run here) and stop it with this module, before
    # other packages' async tests run in the same session.
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def open_page(browser: Browser, url: str, locale: str = "en-US") -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale=locale)
    page = context.new_page()
    page.goto(url + "/")
    # Loaded: the conversations were read from the browser and the gateway asked for the history.
    page.wait_for_selector("#conversations input:checked", timeout=30_000)
    return page


# Records every text the newest answer shows, as it changes, so a test can see the streaming.
WATCH = """() => {
  window.__omnirag_seen = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"] .message-content');
    const last = bots[bots.length - 1];
    if (!last) return;
    const text = last.innerText;
    const seen = window.__omnirag_seen;
    if (seen[seen.length - 1] !== text) seen.push(text);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""
TURN_OVER = """(question) => {
  const chat = '#chatbot [data-testid="user"], #chatbot [data-testid="bot"]';
  const messages = [...document.querySelectorAll(chat)];
  const last = messages[messages.length - 1];
  // The turn's question: the user's messages (its text, each attachment) before its answers.
  let i = messages.length - 1;
  while (i >= 0 && messages[i].dataset.testid === 'bot') i--;
  let asked = '';
  while (i >= 0 && messages[i].dataset.testid === 'user') asked = messages[i--].innerText + asked;
  return Boolean(
    last && last.dataset.testid === 'bot' && last.querySelector('.omnirag-meta, .omnirag-error') &&
    asked.includes(question) && !document.querySelector('#chat-input textarea').disabled
  );
}"""


def ask(page: Page, text: str, files: list[Path] | None = None) -> list[str]:
    """Type a question (with attachments), send it, wait for the answer's sources or error;
    return the texts the answer went through."""
    page.evaluate(WATCH)
    if files:
        page.set_input_files("#chat-input input[type=file]", [str(f) for f in files])
        page.wait_for_selector("#chat-input .thumbnail-item, #chat-input img", timeout=10_000)
    page.fill("#chat-input textarea", text)
    page.keyboard.press("Enter")
    try:
        # Over when the chat's last message is an answer with its sources (or an error) after this
        # question, and the box is given back. Not a count of answers: a conversation just switched
        # may still show the previous one's for a moment.
        page.wait_for_function(TURN_OVER, arg=text, timeout=ANSWER_SECONDS)
    except PlaywrightTimeoutError:
        # Say what the page showed when the answer did not come: a stalled stream, a question never
        # sent, an error shown where the test did not look.
        shot = ARTIFACTS_ON_TIMEOUT / f"timeout-{re.sub(r'[^a-z0-9]+', '-', text.lower())[:40]}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=shot)
        seen_so_far = page.evaluate("window.__omnirag_seen")
        pytest.fail(
            f"no answer to {text!r} within {ANSWER_SECONDS / 1000:.0f} s; the answer went through "
            f"{seen_so_far!r}; box: {page.input_value('#chat-input textarea')!r} "
            f"(disabled: {page.eval_on_selector('#chat-input textarea', 'e => e.disabled')}); "
            f"notice: {page.inner_text('#notice')!r}; chat: {page.inner_text('#chatbot')[-800:]!r}; "
            f"screenshot: {shot}"
        )
    seen: list[str] = page.evaluate("window.__omnirag_seen")
    return seen


def last_answer(page: Page) -> Any:
    return page.locator('#chatbot [data-testid="bot"]').last


def current_conversation(page: Page) -> str:
    return str(page.eval_on_selector("#conversations input:checked", "e => e.value"))


def test_ask_and_watch_the_answer_stream_in_with_its_sources(
    browser: Browser, ui_url: str, gateway_url: str, artifacts: Path
) -> None:
    page = open_page(browser, ui_url)
    page.screenshot(path=artifacts / "01-empty.png")
    seen = ask(page, "Which port does the gateway listen on?")

    # Streamed: the answer showed partial texts before its sources came with the last chunk.
    partial = [s for s in seen if s.strip() and "Sources (" not in s]
    assert len(partial) >= 3, seen
    assert any(len(a) < len(b) and b.startswith(a[:10]) for a, b in itertools.pairwise(partial))

    answer = last_answer(page)
    sources = answer.locator(".omnirag-source")
    assert sources.count() >= 1
    first = sources.first.inner_text()
    assert first.startswith("[1]") and "Getting started with omnirag" in first
    assert "getting-started.md" in first and "score" in first and "port 8000" in first
    assert answer.locator("summary").inner_text().startswith("Sources (")
    page.screenshot(path=artifacts / "02-answer-with-sources.png")

    # Thumbs up: stored in the gateway against this answer's chat completion id.
    session = current_conversation(page)
    page.locator('#chatbot button[aria-label="Like"]').last.click()
    page.wait_for_function("document.querySelector('#notice').innerText.includes('Thanks')")
    ratings = httpx.get(gateway_url + "/v1/feedback", params={"session_id": session}, headers=AUTH).json()[
        "data"
    ]
    assert [(r["rating"], r["message_index"]) for r in ratings] == [("up", 1)]
    assert ratings[0]["message_id"].startswith("chatcmpl-")
    page.screenshot(path=artifacts / "03-rated.png")
    page.context.close()


def png_with_text(text: str) -> bytes:
    image = Image.new("RGB", (1000, 140), "white")
    ImageDraw.Draw(image).text((24, 40), text, fill="black", font=ImageFont.load_default(size=48))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_picture_with_a_question_gets_an_answer_grounded_in_it(
    browser: Browser, ui_url: str, gateway_url: str, artifacts: Path, tmp_path: Path
) -> None:
    picture = tmp_path / "question.png"
    picture.write_bytes(png_with_text("Which port does the retriever use?"))
    page = open_page(browser, ui_url)
    ask(page, "Answer the question in this picture.", files=[picture])

    # The picture is shown with the question, as the user sent it.
    user = page.locator('#chatbot [data-testid="user"]').last
    assert user.locator("img").count() >= 1
    # The gateway read the picture (OCR): its text became the question that was searched and kept.
    session = current_conversation(page)
    stored = httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).json()["messages"]
    assert "Which port does the retriever use" in stored[0]["content"]
    # …and the sources under the answer are the ones that answer the picture's question.
    first = last_answer(page).locator(".omnirag-source").first.inner_text()
    assert "getting-started.md" in first and "retriever listens on port 8002" in first
    page.screenshot(path=artifacts / "04-picture-question.png", full_page=True)
    page.context.close()


def test_upload_a_document_and_watch_it_become_searchable(
    browser: Browser, ui_url: str, artifacts: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "parking.md"
    doc.write_text("# Parking\n\nVisitors park behind building C, next to the bicycle shed.\n")
    page = open_page(browser, ui_url)
    page.get_by_text("Upload documents").click()
    name = page.locator("#collection input")
    name.click()
    name.fill("ui-browser")
    name.press("Enter")
    page.set_input_files("#upload-files input[type=file]", str(doc))
    page.wait_for_selector("#upload-files .file-preview, #upload-files table", timeout=10_000)
    page.click("#upload-button")
    page.wait_for_function(
        "document.querySelector('#upload-status').innerText.includes('searchable')", timeout=60_000
    )
    assert "parking.md: searchable in “ui-browser” (chunks: 1)" in page.inner_text("#upload-status")
    assert name.input_value() == "ui-browser"
    page.screenshot(path=artifacts / "05-upload.png")
    page.context.close()


def test_conversations_switch_delete_and_survive_a_reload_in_chinese(
    browser: Browser, ui_url: str, gateway_url: str, artifacts: Path
) -> None:
    page = open_page(browser, ui_url, locale="zh-CN")
    # The interface speaks the browser's language: labels and the text made on the server.
    assert page.get_by_role("button", name="新对话").is_visible()
    assert page.get_by_text("知识库").first.is_visible()
    ask(page, "网关监听哪个端口？")
    first = current_conversation(page)
    assert "来源" in last_answer(page).inner_text()

    page.click("#new-chat")
    page.wait_for_function(f"document.querySelector('#conversations input:checked').value !== '{first}'")
    assert page.locator('#chatbot [data-testid="bot"]').count() == 0
    ask(page, "Which port does the retriever use?")
    second = current_conversation(page)
    labels = page.locator("#conversations label")
    assert labels.count() == 2 and labels.first.inner_text() == "Which port does the retriever use?"
    page.screenshot(path=artifacts / "06-two-conversations-zh.png")

    # Switch back: the first conversation's messages, from the gateway, with their sources.
    page.locator("#conversations label", has_text="网关监听哪个端口？").click()
    page.wait_for_function(
        "document.querySelector('#chatbot').innerText.includes('网关监听哪个端口')", timeout=15_000
    )
    chat = page.inner_text("#chatbot")
    assert "Which port does the retriever use?" not in chat and "来源" in chat

    # A reload: the conversations come back from the browser's storage, the messages from the gateway.
    page.reload()
    page.wait_for_selector("#conversations input:checked", timeout=30_000)
    page.wait_for_function(
        "document.querySelector('#chatbot').innerText.includes('网关监听哪个端口')", timeout=15_000
    )
    assert current_conversation(page) == first
    assert page.locator("#conversations label").count() == 2
    assert page.locator("#chatbot .omnirag-source").count() >= 1
    page.screenshot(path=artifacts / "07-after-reload-zh.png")

    # Delete: gone from the list and from the gateway.
    page.click("#delete-chat")
    page.wait_for_function("document.querySelector('#notice').innerText.includes('已删除')")
    assert page.locator("#conversations label").count() == 1
    assert current_conversation(page) == second
    gone = httpx.get(f"{gateway_url}/v1/sessions/{first}", headers=AUTH)
    assert gone.status_code == 404
    assert httpx.get(f"{gateway_url}/v1/sessions/{second}", headers=AUTH).status_code == 200
    assert "Which port does the retriever use?" in page.inner_text("#chatbot")
    page.screenshot(path=artifacts / "08-deleted-zh.png")
    page.context.close()


def test_a_refused_key_is_a_readable_error(browser: Browser, ui_factory, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    with ui_factory(api_key="not-a-valid-key-0123456789") as ui:
        page = open_page(browser, ui)
        notice = page.inner_text("#notice")
        assert "The gateway refused the UI's API key (401)" in notice
        ask(page, "Which port does the gateway listen on?")
        error = last_answer(page).locator(".omnirag-error").inner_text()
        assert "(401)" in error and "UI_API_KEY" in error
        body = page.inner_text("body")
        assert "Traceback" not in body and "Exception" not in body
        # Still usable: the box takes the next question.
        assert page.eval_on_selector("#chat-input textarea", "e => !e.disabled")
        page.screenshot(path=artifacts / "09-refused-key.png")
        page.context.close()


# ---- login through the identity provider ---------------------------------------------------------


@pytest.fixture(scope="module")
def oidc_ui(ui_factory: UiFactory, oidc_issuer: str) -> Iterator[str]:
    with ui_factory(
        oidc_issuer=oidc_issuer, oidc_client_id="omnirag-ui", oidc_client_secret="omnirag-ui-secret"
    ) as base:
        yield base


def log_in_at_the_provider(browser: Browser, ui: str, issuer: str, sub: str) -> Page:
    """Open the UI: the login sends the browser to the provider, whose form is answered as ``sub``,
    and the provider sends it back to the chat."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US")
    page = context.new_page()
    page.goto(ui + "/")
    page.wait_for_selector("input[name=sub]", timeout=30_000)
    assert page.url.startswith(issuer + "/oauth2/authorize")
    page.fill("input[name=sub]", sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_selector("#conversations input:checked", timeout=30_000)
    assert page.url.startswith(ui + "/")
    return page


def test_log_in_through_the_identity_provider_and_chat_as_that_user(
    browser: Browser, oidc_ui: str, oidc_issuer: str, gateway_url: str, artifacts: Path
) -> None:
    page = log_in_at_the_provider(browser, oidc_ui, oidc_issuer, "alice")
    page.wait_for_function("document.querySelector('#account').innerText.includes('alice')")
    page.screenshot(path=artifacts / "10-logged-in.png")
    # The page itself may not be framed nor sniffed.
    head = page.request.get(oidc_ui + "/")
    assert head.status == 200 and head.headers["x-frame-options"] == "DENY"
    assert head.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert head.headers["x-content-type-options"] == "nosniff"

    ask(page, "Which port does the gateway listen on?")
    session = current_conversation(page)
    # The gateway stored the turn under the UI's key and this user — and only there.
    alice = AUTH | {"X-OmniRAG-User": user_id(oidc_issuer, "alice")}
    stored = httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=alice)
    assert stored.status_code == 200 and stored.json()["messages"][0]["content"].startswith("Which port")
    assert httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).status_code == 404
    bob = AUTH | {"X-OmniRAG-User": user_id(oidc_issuer, "bob")}
    assert httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=bob).status_code == 404

    # Log out: the next visit goes through the provider again.
    page.click("#logout")
    page.wait_for_function("document.body.innerText.includes('logged out')")
    page.goto(oidc_ui + "/")
    page.wait_for_selector("input[name=sub]", timeout=30_000)
    assert page.url.startswith(oidc_issuer)
    page.context.close()


def test_list_and_remove_ones_own_upload(
    browser: Browser, oidc_ui: str, oidc_issuer: str, gateway_url: str, artifacts: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "canteen.md"
    doc.write_text("# Canteen\n\nThe canteen on floor 2 serves lunch from 11:30 to 14:00.\n")
    page = log_in_at_the_provider(browser, oidc_ui, oidc_issuer, "dora")
    page.get_by_text("Upload documents").click()
    name = page.locator("#collection input")
    name.click()
    name.fill("ui-mine")
    name.press("Enter")
    page.set_input_files("#upload-files input[type=file]", str(doc))
    page.wait_for_selector("#upload-files .file-preview, #upload-files table", timeout=10_000)
    page.click("#upload-button")
    page.wait_for_function(
        "document.querySelector('#upload-status').innerText.includes('searchable')", timeout=90_000
    )
    # The panel lists what this user uploaded into the knowledge base.
    mine = page.locator("#my-documents label", has_text="canteen.md")
    mine.wait_for(timeout=30_000)
    assert page.locator("#my-documents label").count() == 1
    page.screenshot(path=artifacts / "11-my-documents.png", full_page=True)
    # Listed under this user only: another user of the UI's key sees nothing of it.
    dora = AUTH | {"X-OmniRAG-User": user_id(oidc_issuer, "dora")}
    erin = AUTH | {"X-OmniRAG-User": user_id(oidc_issuer, "erin")}
    params = {"mine": "true"}
    listed = httpx.get(f"{gateway_url}/v1/collections/ui-mine/documents", params=params, headers=dora).json()
    assert len(listed["data"]) == 1 and listed["data"][0]["source"].endswith("canteen.md")
    others = httpx.get(f"{gateway_url}/v1/collections/ui-mine/documents", params=params, headers=erin).json()
    assert others["data"] == []

    mine.click()
    page.click("#docs-remove")
    page.wait_for_function(
        "document.querySelector('#my-documents-info').innerText.includes('removed')", timeout=90_000
    )
    assert "canteen.md: removed" in page.inner_text("#my-documents-info")
    # Then listed again, from the version without it.
    page.wait_for_function("document.querySelectorAll('#my-documents label').length === 0", timeout=30_000)
    assert "You have uploaded no documents here." in page.inner_text("#my-documents-info")
    listed = httpx.get(f"{gateway_url}/v1/collections/ui-mine/documents", params=params, headers=dora).json()
    assert listed["data"] == []
    page.screenshot(path=artifacts / "12-removed.png", full_page=True)
    page.context.close()


# ---- models and reasoning ------------------------------------------------------------------------

# The thinking section of the newest answer as it changes: its text, and the answer's visible text.
WATCH_THINKING = """() => {
  window.__omnirag_thinking = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    const last = bots[bots.length - 1];
    const section = last && last.querySelector('.omnirag-thinking-text');
    if (!section) return;
    const seen = window.__omnirag_thinking;
    const state = {thinking: section.textContent, shown: last.innerText};
    const prev = seen[seen.length - 1];
    if (!prev || prev.thinking !== state.thinking || prev.shown !== state.shown) seen.push(state);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def choose_model(page: Page, name: str) -> None:
    page.click("#model input")
    # The option whose label starts with the name ("Automatic (…)" names the default model too).
    starts = re.compile(r"^[\s✓]*" + re.escape(name))
    option = page.locator('[data-testid="dropdown-option"]').filter(has_text=starts)
    option.wait_for()
    option.click()
    page.wait_for_function(f"document.querySelector('#model input').value.startsWith('{name}')")


def chosen_model(page: Page) -> str:
    return page.input_value("#model input")


def test_choose_the_reasoning_model_and_see_its_thinking_collapsed_above_the_answer(
    browser: Browser, two_models: tuple[str, str, ScriptedLLM], artifacts: Path
) -> None:
    ui, gateway_url, upstream = two_models
    page = open_page(browser, ui)
    # "Automatic" chosen, then the models the key may use; the reasoning model marked as one.
    page.wait_for_function("document.querySelector('#model input').value.startsWith('Automatic')")
    page.click("#model input")
    options = page.locator('[data-testid="dropdown-option"]')
    options.first.wait_for()
    assert [o.strip(" ✓\n") for o in options.all_inner_texts()] == [
        f"Automatic ({LOCAL}, or a model that takes the attachments)",
        LOCAL,
        f"{REASONER} (thinks)",
    ]
    page.screenshot(path=artifacts / "13-models.png", animations="disabled")
    options.filter(has_text=REASONER).click()
    page.wait_for_function(f"document.querySelector('#model input').value.startsWith('{REASONER}')")

    page.evaluate(WATCH_THINKING)
    ask(page, "Which port does the gateway listen on?")
    first = current_conversation(page)
    answer = last_answer(page)
    thinking = answer.locator("details.omnirag-thinking")
    # Collapsed, above the answer, with the model's reasoning inside and not in the answer's text.
    assert thinking.count() == 1
    assert thinking.evaluate("e => e.open") is False
    assert thinking.locator("summary").inner_text() == "Thinking"
    inside = thinking.locator(".omnirag-thinking-text").text_content() or ""
    assert " ".join(inside.split()) == REASONING
    shown = answer.inner_text()
    assert "The gateway listens on port 8000" in shown and "getting-started guide lists" not in shown
    assert shown.index("Thinking") < shown.index("The gateway listens on port 8000")
    assert answer.locator(".omnirag-model").inner_text() == f"Answered by: {REASONER}"
    # Streamed as it came: the section grew before the answer's text arrived.
    states = page.evaluate("window.__omnirag_thinking")
    early = [s for s in states if "port 8000" not in s["shown"]]
    assert early and all(REASONING.startswith(s["thinking"].strip()) for s in early), states
    page.screenshot(path=artifacts / "14-thinking-collapsed.png")
    thinking.locator("summary").click()
    page.wait_for_function("document.querySelector('#chatbot details.omnirag-thinking').open")
    page.screenshot(path=artifacts / "15-thinking-open.png")

    # The gateway asked the upstream for its own name of the model; the stored answer has no
    # thinking in it (the history a follow-up sends back).
    assert upstream.chat_requests[-1]["model"] == "ds-qwen3-8b"
    stored = httpx.get(f"{gateway_url}/v1/sessions/{first}", headers=AUTH).json()["messages"]
    assert stored[-1]["content"] == REASONED_ANSWER

    # A second conversation starts with the model in the chooser; it is switched to the local one.
    page.click("#new-chat")
    page.wait_for_function(f"document.querySelector('#conversations input:checked').value !== '{first}'")
    assert chosen_model(page).startswith(REASONER)
    choose_model(page, LOCAL)
    ask(page, "Which port does the retriever use?")
    second = current_conversation(page)
    answer = last_answer(page)
    assert answer.locator(".omnirag-model").inner_text() == f"Answered by: {LOCAL}"
    assert answer.locator("details.omnirag-thinking").count() == 0

    # Switching conversations brings each one's model back.
    page.locator("#conversations label", has_text="Which port does the gateway listen on?").click()
    page.wait_for_function(f"document.querySelector('#model input').value.startsWith('{REASONER}')")
    assert "Answered by: " + REASONER in page.inner_text("#chatbot")
    page.screenshot(path=artifacts / "16-model-restored.png")
    page.locator("#conversations label", has_text="Which port does the retriever use?").click()
    page.wait_for_function(f"document.querySelector('#model input').value.startsWith('{LOCAL}')")
    assert current_conversation(page) == second

    # …and so does a reload, for the conversation that was open.
    page.locator("#conversations label", has_text="Which port does the gateway listen on?").click()
    page.wait_for_function(f"document.querySelector('#model input').value.startsWith('{REASONER}')")
    page.reload()
    page.wait_for_selector("#conversations input:checked", timeout=30_000)
    page.wait_for_function(f"document.querySelector('#model input').value.startsWith('{REASONER}')")
    assert current_conversation(page) == first
    page.context.close()


# ---- answers quoted from their sources -----------------------------------------------------------

# An extractive answer as the gateway writes it (omnirag.gateway.extract.quoted_answer).
QUOTED = re.compile(r"^(?P<quote>.+) \[(?P<n>\d+)\]$", re.S)
WRONG = "The gateway listens on port 8001 [1]."


def same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def source_entry(answer: Any, n: int) -> Any:
    """Source [n] of the sources list (the page's sanitizer drops data-* attributes: by its label)."""
    label = answer.page.locator(".omnirag-n", has_text=re.compile(rf"^\[{n}\]$"))
    return answer.locator(".omnirag-source").filter(has=label)


def check_quoted(page: Page, quote: str, n: int, badge: str) -> None:
    """The newest answer has ``badge``, and ``quote`` marked once, in source [n]'s snippet."""
    answer = last_answer(page)
    shown = answer.locator(".omnirag-badge")
    assert shown.count() == 1 and " ".join(shown.inner_text().split()) == badge
    marks = answer.locator("mark.omnirag-quote")
    assert marks.count() == 1
    assert source_entry(answer, n).locator(".omnirag-snippet mark.omnirag-quote").count() == 1
    assert same_text(marks.inner_text(), quote)
    # Highlighted for real: the page's style gives the mark its own background.
    assert marks.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 243, 163)"


@pytest.fixture(scope="module")
def extract_ui(ui_factory: UiFactory) -> Iterator[str]:
    """A UI that asks the gateway for extractive answers (UI_ANSWER_MODE=extract): no LLM call."""
    with ui_factory(answer_mode="extract") as base:
        yield base


def test_an_extractive_answer_is_marked_and_its_sentence_highlighted_in_its_source(
    browser: Browser, extract_ui: str, gateway_url: str, artifacts: Path
) -> None:
    page = open_page(browser, extract_ui)
    ask(page, "Which port does the gateway listen on?")
    # What the gateway answered (and keeps): the quoted sentence and the number of its source.
    session = current_conversation(page)
    stored = httpx.get(f"{gateway_url}/v1/sessions/{session}", headers=AUTH).json()["messages"]
    found = QUOTED.match(stored[-1]["content"])
    assert found is not None, stored[-1]
    quote, n = found["quote"], int(found["n"])
    assert "8000" in quote
    check_quoted(page, quote, n, f"❝ Quoted from source [{n}]")
    # The quote is the answer's text; the source it came from is the one named.
    answer = last_answer(page)
    assert quote.split()[0] in answer.inner_text()
    assert "getting-started.md" in source_entry(answer, n).inner_text()
    # No model answered: none is named.
    assert answer.locator(".omnirag-model").count() == 0
    page.screenshot(path=artifacts / "17-extractive-answer.png")

    # After a reload the badge and the mark come back with the sources, from the browser's store.
    page.reload()
    page.wait_for_selector("#chatbot mark.omnirag-quote", timeout=30_000)
    check_quoted(page, quote, n, f"❝ Quoted from source [{n}]")
    page.context.close()


@pytest.fixture(scope="module")
def wrong_model(gateway_factory: GatewayFactory) -> Iterator[tuple[str, ScriptedLLM]]:
    """(gateway, upstream): a gateway whose one model answers every question with a wrong port, as
    the embedded 135M model did (the issue's screenshots): the exact bad answer, scripted."""
    with scripted_llm(Plain(WRONG, chunk_chars=4), models=("wrong-port",)) as upstream:
        models = json.dumps([{"name": "wrong-port", "base_url": str(upstream), "capabilities": ["text"]}])
        with gateway_factory(models=models) as gateway:
            yield gateway, upstream


def test_a_wrong_answer_is_replaced_by_a_quote_in_auto_and_flagged_in_generate(
    browser: Browser, ui_factory: UiFactory, wrong_model: tuple[str, ScriptedLLM], artifacts: Path
) -> None:
    gateway, upstream = wrong_model
    question = "Which port does the gateway listen on?"
    reason = "number 8001 is not in the cited sources"
    with ui_factory(gateway_url=gateway, answer_mode="auto") as ui:
        page = open_page(browser, ui)
        ask(page, question)
        asked = len(upstream.chat_requests)
        assert asked >= 1  # the model did answer: its answer failed the check
        session = current_conversation(page)
        stored = httpx.get(f"{gateway}/v1/sessions/{session}", headers=AUTH).json()["messages"][-1]["content"]
        found = re.match(
            r"^The model's answer did not match its sources; the closest passage, from \[(\d+)\]: “(.+)”$",
            stored,
            re.S,
        )
        assert found is not None, stored
        n, quote = int(found[1]), found[2]
        check_quoted(
            page,
            quote,
            n,
            f"⚠ The model's answer did not match its sources — quoted from [{n}] instead ({reason})",
        )
        # The model's wrong answer is not shown (the embedder's port 8001 is, in a source).
        assert "The gateway listens on port 8001" not in last_answer(page).inner_text()
        page.screenshot(path=artifacts / "18-fallback-answer.png")
        page.context.close()

    # generate: the model's answer is shown as it is, flagged as not confirmed by its sources.
    with ui_factory(gateway_url=gateway, answer_mode="generate") as ui:
        page = open_page(browser, ui)
        ask(page, question)
        answer = last_answer(page)
        assert "The gateway listens on port 8001" in answer.inner_text()
        badge = answer.locator(".omnirag-badge.omnirag-ungrounded")
        assert (
            badge.count() == 1 and badge.inner_text().strip() == f"⚠ Not confirmed by its sources: {reason}"
        )
        assert answer.locator("mark").count() == 0
        page.screenshot(path=artifacts / "19-not-confirmed-answer.png")
        page.context.close()


# What the embedded SmolLM2 once answered (a test run's page then showed its sources as code).
OPEN_FENCE = "The gateway listens on port 8000.\n```python\n\n# This\n"


@pytest.fixture(scope="module")
def open_fence_model(gateway_factory: GatewayFactory) -> Iterator[str]:
    """A gateway whose one model opens a code block and never closes it."""
    with scripted_llm(Plain(OPEN_FENCE, chunk_chars=4), models=("open-fence",)) as upstream:
        models = json.dumps([{"name": "open-fence", "base_url": str(upstream), "capabilities": ["text"]}])
        with gateway_factory(models=models) as gateway:
            yield gateway


def test_an_answer_that_leaves_a_code_block_open_still_shows_its_sources(
    browser: Browser, ui_factory: UiFactory, open_fence_model: str, artifacts: Path
) -> None:
    with ui_factory(gateway_url=open_fence_model, answer_mode="generate") as ui:
        page = open_page(browser, ui)
        ask(page, "Which port does the gateway listen on?")
        answer = last_answer(page)
        # The model's text as it wrote it, its unfinished code as code; then the sources, as sources.
        assert "The gateway listens on port 8000." in answer.inner_text()
        assert "# This" in answer.locator("pre").inner_text()
        assert answer.locator(".omnirag-sources .omnirag-source").count() >= 1
        assert "omnirag-meta" not in answer.locator("pre").inner_text()
        page.screenshot(path=artifacts / "20-open-code-block.png")
        page.context.close()
