"""The UI's pure parts: the language chosen from the browser, errors as sentences, sources escaped
so a document cannot inject markup, the conversations a browser sends back parsed as untrusted
input, and the settings (the key falling back to GATEWAY_DEV_KEY, every UI_* variable documented)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omnirag_harness.gateway_stack import REPO

from omnirag.ui.config import UiSettings
from omnirag.ui.conversations import MAX_ANSWERS_KEPT, Store
from omnirag.ui.gateway import ChatModel, GatewayError, chat_models, provenance
from omnirag.ui.render import (
    answer_content,
    answer_key,
    closed_markdown,
    error_text,
    find_quote,
    model_label,
    provenance_html,
    sources_html,
)
from omnirag.ui.texts import LABELS, TEXTS, i18n_tables, lang_of, t


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "en"),
        ("", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,zh;q=0.5", "zh"),  # no French: the best supported language
        ("de-DE", "en"),
        ("en;q=0.2, zh-TW;q=0.6", "zh"),
        ("zh-Hans-CN", "zh"),
    ],
)
def test_language_follows_the_browser(header: str | None, lang: str) -> None:
    assert lang_of(header) == lang


def test_every_text_has_both_languages_and_labels_reach_gradio() -> None:
    for key, (en, zh) in TEXTS.items():
        assert en.strip() and zh.strip(), key
        assert en.count("{") == zh.count("{"), f"{key}: placeholders differ"
    tables = i18n_tables()
    assert set(tables) == {"en", "zh"}
    assert all(len(tables[lang]) == len(LABELS) for lang in tables)
    # Gradio's own keys ("chatbot", "upload_text", …) are namespaces: ours never collide with them.
    assert all(k.startswith("omnirag_") for k in tables["en"])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GatewayError(401, "invalid_api_key", "invalid API key"), "refused the UI's API key (401)"),
        (GatewayError(403, "collection_forbidden", "no"), "Not allowed (403)"),
        (GatewayError(429, "rate_limited", "rate limit", retry_after=17), "wait 17 s"),
        (GatewayError(429, "rate_limited", "rate limit"), "wait a moment"),
        (GatewayError(502, "llm_unavailable", "the LLM is down"), "could not answer (502)"),
        (GatewayError(503, "not_ready", "x"), "could not answer (503)"),
        (GatewayError(502, "llm_error", "the LLM failed: ConnectError"), "could not answer (502)"),
        (GatewayError(502, "stream_broken", "the LLM stream broke: ReadError"), "cut off"),
        (GatewayError(422, "invalid_input", "bad"), "refused the request (422)"),
        (GatewayError(None, "unreachable", "the gateway cannot be reached"), "Is it running at"),
        (RuntimeError("boom\nTraceback (most recent call last)"), "Something went wrong in the UI"),
    ],
)
def test_errors_are_sentences(error: BaseException, expected: str) -> None:
    text = error_text("en", error, "http://127.0.0.1:8000")
    assert expected in text
    assert "Traceback" not in text and "boom" not in text
    assert error_text("zh", error, "http://127.0.0.1:8000") != text  # and there is a Chinese one


def test_sources_are_escaped_numbered_and_linked() -> None:
    html = sources_html(
        "en",
        [
            {
                "n": 1,
                "title": "<img src=x onerror=alert(1)> Ports",
                "source": "notes.md",
                "score": 0.8312,
                "snippet": "**bold** [link](javascript:alert(1)) $$x$$ <script>alert(1)</script>",
            },
            {"n": 2, "title": "Web page", "source": "https://docs.example.com/a?b=1&c=2", "score": 0.5},
            {"n": 3, "title": "Trap", "source": "javascript:alert(1)", "score": 0.1},
        ],
        rewritten_query="what port does <b>it</b> use",
        degraded=["history"],
    )
    assert "<img" not in html and "<script" not in html and "<b>it" not in html
    assert "**" not in html and "$$" not in html and "[link]" not in html
    assert "[1]" in html and "[2]" in html and "score 0.83" in html
    assert '<a href="https://docs.example.com/a?b=1&amp;c=2" target="_blank"' in html
    assert 'href="javascript' not in html
    assert "Searched for" in html and "conversation history was unavailable" in html
    assert sources_html("en", []) == ""
    assert "来源" in sources_html("zh", [{"n": 1, "title": "a", "source": "a.md", "score": 1}])


def test_the_browser_store_is_parsed_as_untrusted_input() -> None:
    key = answer_key("The gateway listens on port 8000.")
    raw = {
        "current": "ui-b",
        "conversations": [
            {"id": "ui-a", "title": "x" * 500, "collection": "docs", "updated": 5},
            {"id": "../../etc/passwd", "title": "bad id"},
            {"id": "ui-b", "title": "second", "collection": "BAD NAME", "updated": "soon"},
            {"id": "ui-a", "title": "duplicate"},
            "not a dict",
        ]
        + [{"id": "ui-0", "collection": "docs\n"}]
        + [{"id": f"ui-{i}"} for i in range(1, 100)],
        "meta": {
            "ui-a": {
                key: {"id": "chatcmpl-1", "citations": [{"n": 1, "snippet": "s" * 5000}] * 50, "degraded": 7},
                "not-a-key": {"id": "x"},
            },
            "ui-unknown": {key: {}},
        },
    }
    store = Store.parse(raw, max_conversations=5)
    assert [c.id for c in store.conversations] == ["ui-a", "ui-b", "ui-0", "ui-1", "ui-2"]
    assert len(store.conversations[0].title) <= 80
    assert store.conversations[1].collection is None and store.conversations[1].updated == 0.0
    assert store.conversations[2].collection is None  # "docs\n": the shared rule takes no newline
    assert store.current == "ui-b"
    assert set(store.meta) == {"ui-a"} and set(store.meta["ui-a"]) == {key}
    kept = store.meta["ui-a"][key]
    assert kept["id"] == "chatcmpl-1" and kept["degraded"] == []
    assert len(kept["citations"]) <= 20 and all(len(c["snippet"]) <= 400 for c in kept["citations"])
    for junk in (None, "x", 3, [], {"conversations": "no"}):
        assert Store.parse(junk, 5).conversations == []

    store.remove("ui-b")
    assert store.current == "ui-a"
    for i in range(MAX_ANSWERS_KEPT + 5):
        store.remember("ui-a", answer_key(str(i)), {"citations": []})
    assert len(store.meta["ui-a"]) == MAX_ANSWERS_KEPT
    conv = store.start("docs", max_conversations=3)
    assert store.current == conv.id and len(store.conversations) == 3


def test_the_key_falls_back_to_the_development_key_in_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("UI_API_KEY", "GATEWAY_DEV_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert UiSettings().api_key is None
    (tmp_path / ".env").write_text("GATEWAY_DEV_KEY=omni-dev-from-make-run\n")
    key = UiSettings().api_key
    assert key is not None and key.get_secret_value() == "omni-dev-from-make-run"
    monkeypatch.setenv("UI_API_KEY", "ui-own-key")
    key = UiSettings().api_key
    assert key is not None and key.get_secret_value() == "ui-own-key"
    assert "ui-own-key" not in repr(UiSettings())


def test_env_example_documents_every_ui_setting() -> None:
    text = (REPO / "config/.env.example").read_text()
    missing = [n for n in UiSettings.model_fields if f"UI_{n.upper()}=" not in text]
    assert not missing, f"config/.env.example lacks {missing}"


def test_texts_format() -> None:
    assert t("en", "err_429", message="m", seconds=3).endswith("Please wait 3 s and try again.")
    assert "3" in t("zh", "err_429", message="m", seconds=3)


# ---- models and reasoning -------------------------------------------------------------------------


def test_the_chat_models_are_read_from_the_gateways_list() -> None:
    body = {
        "object": "list",
        "data": [
            {
                "id": "deepseek-r1",
                "object": "model",
                "omnirag": {"capabilities": ["text", "reasoning", "tools"]},
            },
            {
                "id": "qwen-omni",
                "object": "model",
                "omnirag": {"capabilities": ["text", "vision", "audio", "video"], "default": True},
            },
            {
                "id": "bge-m3",
                "object": "model",
                "omnirag": {"capabilities": ["embeddings"], "default": False},
            },
            {"id": "bad name with spaces", "omnirag": {"capabilities": ["text"]}},
            {"id": "deepseek-r1", "omnirag": {"capabilities": ["text"]}},  # listed twice: the first wins
            "junk",
            {"object": "model"},
        ],
    }
    models = chat_models(body)
    assert [m.name for m in models] == ["deepseek-r1", "qwen-omni"]
    assert [m.default for m in models] == [False, True]
    assert models[0].capabilities == ("text", "tools", "reasoning")
    # A gateway without the omnirag object: its chat model as text, its embedder left out.
    old = {"data": [{"id": "llm", "owned_by": "omnirag"}, {"id": "emb", "owned_by": "omnirag-embedder"}]}
    assert chat_models(old) == [ChatModel("llm")]
    assert chat_models({"data": [{"id": f"m{i}"} for i in range(500)]})[-1].name == "m63"
    for junk in (None, [], {"data": "x"}, {"data": [None]}):
        assert chat_models(junk) == []


def test_the_dropdown_marks_what_a_model_takes_beyond_text() -> None:
    omni = ChatModel("qwen-omni", ("text", "vision", "audio", "video"))
    assert model_label("en", omni) == "qwen-omni (images, audio, video)"
    assert model_label("zh", omni) == "qwen-omni（图片、音频、视频）"
    assert model_label("en", ChatModel("seer", ("text", "vision", "audio"))) == "seer (images, audio)"
    assert model_label("en", ChatModel("deepseek-r1", ("text", "reasoning"))) == "deepseek-r1 (thinks)"
    assert model_label("en", ChatModel("llama", ("text", "tools"))) == "llama"


def test_thinking_is_a_collapsed_section_above_the_answer_and_the_model_is_named() -> None:
    reasoning = "First line <script>alert(1)</script>\n\n**not bold** $x$\nthird"
    meta = {"citations": [{"n": 1, "title": "T", "source": "a.md", "score": 0.5}], "model": "deepseek-r1"}
    shown = answer_content("en", "Port 8000 [1].", meta, reasoning=reasoning)
    thinking, answer, block = shown.split("\n\n")
    # One line of HTML, so the Markdown renderer keeps it whole; collapsed (no "open").
    assert thinking.startswith('<details class="omnirag-thinking"><summary>Thinking</summary>')
    assert '<details class="omnirag-thinking" open' not in thinking
    assert "First line" in thinking and "<br>" in thinking and "third" in thinking
    assert "<script" not in thinking and "**" not in thinking and "$x$" not in thinking
    assert answer == "Port 8000 [1]."
    assert 'class="omnirag-model"' in block and "Answered by: <code>deepseek-r1</code>" in block
    assert block.index("omnirag-model") < block.index("omnirag-sources")
    # While the thinking streams (no answer yet) its summary says so; no thinking, no section.
    streaming = answer_content("en", "", None, reasoning="hmm", streaming=True)
    assert streaming.startswith('<details class="omnirag-thinking"><summary>Thinking…</summary>')
    assert answer_content("en", "Port 8000.", None, reasoning="  ") == "Port 8000."
    assert "思考过程" in answer_content("zh", "a", None, reasoning="b")
    # The model line alone makes the block (an answer without sources still says who answered).
    assert "Answered by" in sources_html("en", [], model="llama-local")
    assert "回答模型" in sources_html("zh", [], model="llama-local")
    # Long thinking is cut, still one line.
    long = answer_content("en", "", None, reasoning="word\n" * 20_000)
    assert len(long) < 200_000 and "\n" not in long


def test_each_conversation_keeps_its_model_in_the_browser() -> None:
    store = Store()
    a = store.start("docs", 10, "deepseek-r1")
    b = store.start("docs", 10)
    store.choose(b.id, "qwen-omni")
    store.remember(a.id, answer_key("x"), {"citations": [], "model": "deepseek-r1"})
    again = Store.parse(store.dump(), 10)
    assert again.get(a.id).model == "deepseek-r1"  # type: ignore[union-attr]
    assert again.get(b.id).model == "qwen-omni"  # type: ignore[union-attr]
    assert again.meta[a.id][answer_key("x")]["model"] == "deepseek-r1"
    store.choose(b.id, "not a model name!")
    assert store.get(b.id).model is None  # type: ignore[union-attr]
    raw = store.dump()
    raw["conversations"][0]["model"] = "x" * 500
    raw["meta"][a.id][answer_key("x")]["model"] = ["junk"]
    parsed = Store.parse(raw, 10)
    assert parsed.conversations[0].model is None and parsed.meta[a.id][answer_key("x")]["model"] is None


def test_a_model_the_gateway_does_not_offer_is_a_sentence() -> None:
    error = GatewayError(404, "model_not_found", "the model 'gone' does not exist")
    assert "Choose another model" in error_text("en", error, "http://127.0.0.1:8000")
    assert "请选择其他模型" in error_text("zh", error, "http://127.0.0.1:8000")


# ---- extractive answers: the badge, the quoted sentence marked in its source ---------------------

GUIDE = {
    "n": 1,
    "title": "Getting started",
    "source": "getting-started.md",
    "score": 0.81,
    # As the gateway's snippet has it: the chunk's text, lines and Markdown kept.
    "snippet": "# Getting started\n\nRun `make run`. The gateway listens\non port 8000; the UI on 7860.",
}
GUIDE_ZH = {
    "n": 2,
    "title": "快速开始",
    "source": "kuaisu.md",
    "score": 0.62,
    # A hard-wrapped Chinese paragraph: the extract joins its lines without a space.
    "snippet": "# 快速开始\n\n网关默认监听\n端口 8000。检索服务使用 8002。",
}


def entry(html: str, n: int) -> str:
    """The sources list's entry of citation ``n``."""
    start = html.rindex("<li", 0, html.index(f'data-n="{n}"'))
    return html[start : html.index("</li>", start)]


def test_an_extractive_answer_is_badged_and_its_sentence_marked_in_its_source() -> None:
    quote = "The gateway listens on port 8000; the UI on 7860."
    meta = {
        "citations": [GUIDE, GUIDE_ZH],
        "answer_mode": "extract",
        "answered_by": "extract",
        "grounded": None,
        "fallback": False,
        "quote": {"citation": 1, "text": quote},
    }
    shown = answer_content("en", f"{quote} [1]", meta)
    badge, text, block = shown.split("\n\n")
    assert badge == '<div class="omnirag-badge omnirag-extracted" role="note">❝ Quoted from source [1]</div>'
    assert text == f"{quote} [1]"
    # Marked where it stands in source [1], across the snippet's line break; source [2] unmarked.
    assert f'<mark class="omnirag-quote">{quote}</mark>' in entry(block, 1)
    assert "omnirag-quoted-source" in entry(block, 1) and "Run &#96;make run&#96;. <mark" in entry(block, 1)
    assert "<mark" not in entry(block, 2) and block.count("<mark") == 1
    # No model wrote it, so none is named (the stream names the gateway's model all the same).
    assert "omnirag-model" not in answer_content("en", quote, meta | {"model": "smollm2"})
    fallback = meta | {"model": "smollm2", "fallback": True}
    assert "Answered by: <code>smollm2</code>" in answer_content("en", quote, fallback)

    # In Chinese: the badge in Chinese, the quote found in a snippet whose lines it joined.
    zh = meta | {"quote": {"citation": 2, "text": "网关默认监听端口 8000。"}}
    shown = answer_content("zh", "网关默认监听端口 8000。 [2]", zh)
    badge, _, block = shown.split("\n\n")
    assert "引自来源 [2]" in badge and "Quoted" not in badge
    assert '&#35; 快速开始 <mark class="omnirag-quote">网关默认监听 端口 8000。</mark>检索' in entry(block, 2)
    assert "<mark" not in entry(block, 1)
    assert find_quote(GUIDE_ZH["snippet"], "检索服务使用 8002。") is not None
    assert find_quote(GUIDE_ZH["snippet"], "检索服务使用 8003。") is None


def test_a_quote_not_in_the_snippet_is_shown_marked_in_its_sources_entry() -> None:
    # The snippet is the start of the source; the sentence quoted may come later in it.
    quote = "Stop everything with Ctrl-C."
    meta = {"citations": [GUIDE], "answered_by": "extract", "quote": {"citation": 1, "text": quote}}
    block = answer_content("en", f"{quote} [1]", meta).split("\n\n")[-1]
    one = entry(block, 1)
    assert "The gateway listens on port 8000; the UI on 7860.<br>" in one
    assert f'<span class="omnirag-quoted">Quoted: <mark class="omnirag-quote">{quote}</mark></span>' in one
    block = answer_content("zh", f"{quote} [1]", meta | {"citations": [GUIDE]}).split("\n\n")[-1]
    assert '<span class="omnirag-quoted">引用: <mark class="omnirag-quote">' in block


def test_a_quote_is_escaped_like_everything_from_a_document() -> None:
    hostile = "Run <script>alert(1)</script> **now** [x](javascript:alert(1)) $x$ <img src=x onerror=f()>."
    source = {"n": 1, "title": "T", "source": "t.md", "score": 0.5, "snippet": f"Intro.\n{hostile} After."}
    for snippet in (source["snippet"], "Unrelated start of the source."):
        meta = {
            "citations": [source | {"snippet": snippet}],
            "answered_by": "extract",
            "quote": {"citation": 1, "text": hostile},
        }
        shown = answer_content("en", "", meta)
        assert shown.count("<mark") == 1
        marked = shown[shown.index("<mark") : shown.index("</mark>")]
        assert "<script" not in shown and "<img" not in shown and "**" not in shown and "$x$" not in shown
        assert "[x]" not in shown and "&#60;script&#62;alert(1)&#60;/script&#62;" in marked
    # Found in the snippet: the text around the mark keeps its spaces.
    shown = answer_content("en", "", meta | {"citations": [source]})
    assert "Intro. <mark" in shown and "</mark> After." in shown


def test_a_fallback_and_an_unconfirmed_answer_say_so() -> None:
    fallback = {
        "citations": [GUIDE],
        "answer_mode": "auto",
        "answered_by": "extract",
        "grounded": False,
        "grounding_reason": "number 8001 is not in the cited sources <b>",
        "fallback": True,
        "quote": {"citation": 1, "text": "The gateway listens on port 8000; the UI on 7860."},
    }
    badge = provenance_html("en", fallback)
    assert "The model's answer did not match its sources — quoted from [1] instead" in badge
    assert "omnirag-fallback" in badge and "(number 8001 is not in the cited sources &#60;b&#62;)" in badge
    assert "模型的回答与其来源不符 —— 改为引用来源 [1] 的原文" in provenance_html("zh", fallback)
    assert "<mark" in answer_content("en", "The model's answer did not match…", fallback)

    # generate mode: the model's answer stays, marked as not confirmed, with the reason.
    generated = {
        "citations": [GUIDE],
        "answer_mode": "generate",
        "answered_by": "model",
        "grounded": False,
        "grounding_reason": "number 8001 is not in the cited sources",
        "fallback": False,
        "quote": None,
    }
    badge = provenance_html("en", generated)
    assert badge == (
        '<div class="omnirag-badge omnirag-ungrounded" role="note">⚠ Not confirmed by its sources: '
        "number 8001 is not in the cited sources</div>"
    )
    assert "未能在来源中得到证实：number 8001" in provenance_html("zh", generated)
    assert "<mark" not in answer_content("en", "Port 8001 [1].", generated)
    # Nothing to say: a model's answer that passed, or was not checked, or an old stored answer.
    quiet = (generated | {"grounded": True}, generated | {"grounded": None}, {"citations": [GUIDE]}, None)
    for meta in quiet:
        assert provenance_html("en", meta) == ""
    # An extractive answer without its quote (the search was down): no badge, nothing marked.
    assert provenance_html("en", {"answered_by": "extract", "quote": None}) == ""


def test_the_answers_provenance_is_read_checked_and_kept_in_the_browser() -> None:
    meta = {
        "answer_mode": "auto",
        "answered_by": "extract",
        "grounded": False,
        "grounding_reason": "repetition",
        "fallback": True,
        "quote": {"citation": 2, "text": "q" * 5000},
    }
    read = provenance(meta)
    assert read["answered_by"] == "extract" and read["fallback"] is True and read["grounded"] is False
    assert read["quote"]["citation"] == 2 and len(read["quote"]["text"]) == 700  # type: ignore[index]
    junk = {
        "answer_mode": "shout",
        "answered_by": "<script>",
        "grounded": "yes",
        "grounding_reason": 7,
        "fallback": "true",
        "quote": {"citation": True, "text": "x"},
    }
    assert provenance(junk) == {
        "answer_mode": None,
        "answered_by": None,
        "grounded": None,
        "grounding_reason": None,
        "fallback": False,
        "quote": None,
    }
    bad_quotes = (
        {"citation": "1", "text": "x"},
        {"citation": 0, "text": "x"},
        {"citation": 1, "text": " "},
        [],
    )
    for bad in bad_quotes:
        assert provenance({"quote": bad})["quote"] is None

    # Kept with the answer's citations, so a reload shows the badge and the mark again.
    store = Store()
    conv = store.start("docs", 10)
    key = answer_key("The gateway listens on port 8000; the UI on 7860. [1]")
    store.remember(conv.id, key, {"citations": [GUIDE]} | meta | {"quote": {"citation": 1, "text": "x"}})
    raw = store.dump()
    raw["meta"][conv.id]["junk" + key] = {"quote": {"citation": 1, "text": "y"}}
    again = Store.parse(raw, 10).meta[conv.id]
    assert set(again) == {key}
    kept = again[key]
    assert kept["answered_by"] == "extract" and kept["fallback"] is True
    assert kept["quote"] == {"citation": 1, "text": "x"} and kept["grounding_reason"] == "repetition"
    raw["meta"][conv.id][key] |= junk
    assert Store.parse(raw, 10).meta[conv.id][key]["quote"] is None


@pytest.mark.parametrize(
    "answer",
    [
        # What SmolLM2 wrote in a test run: a fence opened, never closed (the page then showed the
        # sources' HTML as code, and no sources block).
        "The retriever uses port 80 on the default port of the web UI.\n```python\n\n# This\n",
        "Run it:\n~~~~\nmake run\n~~~",  # a shorter closing fence closes nothing
        "  ```\nindented fence",
        "Ports <!-- the table",
    ],
)
def test_an_answer_that_leaves_a_code_block_open_does_not_swallow_its_sources(answer: str) -> None:
    """Rendered as CommonMark (markdown-it, as the page's renderer follows it): the sources block
    is HTML after the answer, whatever the model left open."""
    from markdown_it import MarkdownIt

    meta = {"citations": [{"n": 1, "title": "T", "source": "a.md", "score": 0.5}], "model": "smollm2"}
    tokens = MarkdownIt("commonmark").parse(answer_content("en", answer, meta))
    blocks = [tok for tok in tokens if tok.type == "html_block"]
    assert blocks and 'class="omnirag-meta"' in blocks[-1].content, [(t.type, t.content) for t in tokens]
    assert not any("omnirag-meta" in tok.content for tok in tokens if tok.type in ("fence", "code_block"))
    # The answer's own text is kept.
    assert closed_markdown(answer).startswith(answer.rstrip("\n"))


def test_closed_markdown_leaves_balanced_answers_alone() -> None:
    for text in ["Port 8000 [1].", "```bash\nmake run\n```\nThen open it.", "~~~\na\n~~~~", "<!-- c --> x"]:
        assert closed_markdown(text) == text
