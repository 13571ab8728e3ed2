"""What the page shows around an answer: the model's thinking above it; under it the model that
answered, its sources, the rewritten question and degraded parts; errors as sentences; the models
offered.

Everything that comes from documents (titles, snippets, sources) or from the model's thinking is
escaped before it reaches the chat's Markdown renderer, so neither can inject markup, links or
LaTeX into the page.
"""

from __future__ import annotations

import hashlib
import html
from typing import Any
from urllib.parse import urlparse

from omnirag.ui.gateway import ChatModel, GatewayError
from omnirag.ui.texts import t

# Characters Markdown or the chat's LaTeX renderer would act on, written as entities instead.
_MARKDOWN = str.maketrans({c: f"&#{ord(c)};" for c in "*_[]`$|~#\\<>&\"'"})


def escape(text: Any, limit: int | None = None) -> str:
    s = " ".join(str(text or "").split())
    if limit is not None and len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s.translate(_MARKDOWN)


def escape_lines(text: str, limit: int) -> str:
    """Like ``escape``, but line breaks are kept as ``<br>``: the result stays one line of HTML, so
    the Markdown renderer never leaves the HTML block it opens (a blank line would)."""
    s = text if len(text) <= limit else text[: limit - 1] + "…"
    return "<br>".join(escape(line) for line in s.splitlines())


# Thinking shown per answer: a reasoning model may think for thousands of tokens; the page keeps
# the start of it, the gateway's token limit bounds it too.
MAX_REASONING_CHARS = 40_000

# How the dropdown marks what a model takes beyond text (order of the marks).
_MARKS = (
    ("vision", "cap_vision"),
    ("audio", "cap_audio"),
    ("video", "cap_video"),
    ("reasoning", "cap_reasoning"),
)


def model_label(lang: str, model: ChatModel) -> str:
    """A model as the dropdown offers it: its name, and what it takes beyond text (images, audio,
    video) or that it thinks before answering, e.g. ``qwen-omni (images, audio, video)``."""
    marks = [t(lang, key) for cap, key in _MARKS if cap in model.capabilities]
    return model.name + (t(lang, "cap_list", marks=t(lang, "cap_sep").join(marks)) if marks else "")


def thinking_html(lang: str, reasoning: str, *, streaming: bool = False) -> str:
    """The model's reasoning as a collapsed section to open on demand, above the answer."""
    if not reasoning.strip():
        return ""
    label = t(lang, "reasoning_streaming" if streaming else "reasoning")
    return (
        '<details class="omnirag-thinking"><summary>'
        + label
        + '</summary><div class="omnirag-thinking-text">'
        + escape_lines(reasoning, MAX_REASONING_CHARS)
        + "</div></details>"
    )


def _link(source: str) -> str | None:
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return source
    return None


def answer_key(text: str) -> str:
    """Names an answer by its text, which is exactly what the gateway stores in the session, so the
    sources kept in the browser find their answer again after a reload."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def sources_html(
    lang: str,
    citations: list[dict[str, Any]],
    *,
    rewritten_query: str | None = None,
    degraded: list[str] | None = None,
    model: str | None = None,
) -> str:
    """The block under an answer: degraded notice, the model that answered, rewritten question,
    numbered sources."""
    parts: list[str] = []
    degraded = degraded or []
    if degraded:
        reasons = []
        for part in degraded:
            key = f"degraded_{part}"
            reasons.append(
                t(lang, key) if key in _DEGRADED_KEYS else t(lang, "degraded_other", part=escape(part))
            )
        parts.append(
            '<div class="omnirag-degraded" role="status">⚠ <strong>'
            + t(lang, "degraded")
            + "</strong>: "
            + "; ".join(reasons)
            + "</div>"
        )
    if model:
        parts.append(
            '<div class="omnirag-model">'
            + t(lang, "answered_by")
            + ": <code>"
            + escape(model, 128)
            + "</code></div>"
        )
    if rewritten_query:
        parts.append(
            '<div class="omnirag-rewritten">'
            + t(lang, "searched_for")
            + ": <em>"
            + escape(rewritten_query, 500)
            + "</em></div>"
        )
    if citations:
        items = []
        for i, c in enumerate(citations, start=1):
            n = int(c.get("n") or i)
            title = escape(c.get("title") or c.get("source") or c.get("id"), 200)
            source = str(c.get("source") or "")
            url = _link(source)
            href = html.escape(url, quote=True) if url else ""
            head = (
                f'<a href="{href}" target="_blank" rel="noopener noreferrer">{title}</a>'
                if url
                else f"<strong>{title}</strong>"
            )
            score = c.get("score")
            score_text = f"{float(score):.2f}" if isinstance(score, int | float) else "–"
            items.append(
                f'<li class="omnirag-source" data-n="{n}"><span class="omnirag-n">[{n}]</span> {head}'
                + (f" · <code>{escape(source, 200)}</code>" if source and not url else "")
                + f' · <span class="omnirag-score">{t(lang, "score")} {score_text}</span>'
                + f'<br><span class="omnirag-snippet">{escape(c.get("snippet"), 400)}</span></li>'
            )
        parts.append(
            '<details class="omnirag-sources" open><summary>'
            + t(lang, "sources")
            + f" ({len(citations)})</summary><ul>"
            + "".join(items)
            + "</ul></details>"
        )
    if not parts:
        return ""
    return '<div class="omnirag-meta">' + "".join(parts) + "</div>"


_DEGRADED_KEYS = {"degraded_retriever", "degraded_history"}


def answer_content(
    lang: str, text: str, meta: dict[str, Any] | None, *, reasoning: str = "", streaming: bool = False
) -> str:
    """An answer as the chat shows it: the model's thinking (collapsed), its text, then the block
    with the model that answered and the sources. ``streaming``: the thinking is still coming."""
    thinking = thinking_html(lang, reasoning, streaming=streaming and not text)
    block = (
        sources_html(
            lang,
            list(meta.get("citations") or []),
            rewritten_query=meta.get("rewritten"),
            degraded=list(meta.get("degraded") or []),
            model=meta.get("model"),
        )
        if meta
        else ""
    )
    return "\n\n".join(x for x in (thinking, text, block) if x)


def error_text(lang: str, exc: BaseException, gateway_url: str) -> str:
    """A sentence for the user; never a traceback."""
    if not isinstance(exc, GatewayError):
        return t(lang, "err_internal", kind=type(exc).__name__)
    message = escape(exc.message.rstrip("."), 300)
    if exc.status is None:
        return t(lang, "err_unreachable", message=message, url=escape(gateway_url))
    if exc.code == "stream_broken":
        return t(lang, "err_stream", message=message)
    if exc.status == 401:
        return t(lang, "err_401", message=message)
    if exc.status == 403:
        return t(lang, "err_403", message=message)
    if exc.code == "model_not_found":
        return t(lang, "err_model", message=message)
    if exc.status == 429:
        if exc.retry_after:
            return t(lang, "err_429", message=message, seconds=exc.retry_after)
        return t(lang, "err_429_nowait", message=message)
    if exc.status >= 500:
        return t(lang, "err_5xx", status=exc.status, message=message)
    return t(lang, "err_4xx", status=exc.status, message=message)


def error_content(text: str) -> str:
    return f'<div class="omnirag-error" role="alert">⚠ {text}</div>'
