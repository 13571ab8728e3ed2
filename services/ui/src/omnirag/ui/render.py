"""What the page shows around an answer: the model's thinking above it, and a badge when the answer
is a sentence quoted from a source (or the model's answer failed its grounding check); under it the
model that answered, its sources (the quoted sentence marked in its source), the rewritten question
and degraded parts; errors as sentences; the models offered.

Everything that comes from documents (titles, snippets, sources) or from the model's thinking is
escaped before it reaches the chat's Markdown renderer, so neither can inject markup, links or
LaTeX into the page.
"""

from __future__ import annotations

import hashlib
import html
import re
from typing import Any
from urllib.parse import urlparse

from omnirag.ui.gateway import MAX_QUOTE_CHARS, ChatModel, GatewayError, quote_of
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


MAX_SNIPPET_CHARS = 400
# Between two of these a line break is no space (Chinese): the extract joins such lines without one.
_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def _normalised(text: str) -> tuple[str, list[int]]:
    """``text`` with every run of whitespace one space (none between two Chinese characters), and
    for each character of the result its index in ``text``: a quote and its source's snippet differ
    in nothing else (the extract joins a paragraph's lines)."""
    out: list[str] = []
    where: list[int] = []
    i = 0
    while i < len(text):
        if not text[i].isspace():
            out.append(text[i])
            where.append(i)
            i += 1
            continue
        j = i
        while j < len(text) and text[j].isspace():
            j += 1
        if out and j < len(text) and not (_CJK.match(out[-1]) and _CJK.match(text[j])):
            out.append(" ")
            where.append(i)
        i = j
    return "".join(out), where


def find_quote(snippet: str, quote: str) -> tuple[int, int] | None:
    """Where ``quote`` stands in ``snippet`` (start and end indices in the snippet), whitespace
    aside; None when it is not all there (the snippet is the start of the source's text only)."""
    body, where = _normalised(snippet)
    wanted, _ = _normalised(quote.strip().removesuffix("…"))  # a long quote is cut with "…"
    at = body.find(wanted) if wanted else -1
    if at < 0:
        return None
    return where[at], where[at + len(wanted) - 1] + 1


def _escape_piece(text: str) -> str:
    """``escape``, keeping a space at either edge: the pieces around a mark are joined again."""
    inner = escape(text)
    if not inner:
        return " " if text[:1].isspace() else ""
    return (" " if text[:1].isspace() else "") + inner + (" " if text[-1:].isspace() else "")


def snippet_html(lang: str, snippet: Any, quote: str | None = None) -> str:
    """A source's snippet, escaped; with ``quote`` (the sentence an extractive answer took from this
    source) marked in it, or, when the snippet does not hold all of it, shown marked after it."""
    text = str(snippet or "")
    if not quote:
        return escape(text, MAX_SNIPPET_CHARS)
    text = text[:MAX_SNIPPET_CHARS]
    span = find_quote(text, quote)
    if span is not None:
        start, end = span
        return (
            _escape_piece(text[:start])
            + '<mark class="omnirag-quote">'
            + escape(text[start:end])
            + "</mark>"
            + _escape_piece(text[end:])
        ).strip()
    shown = escape(text, MAX_SNIPPET_CHARS)
    return (
        (shown + "<br>" if shown else "")
        + '<span class="omnirag-quoted">'
        + t(lang, "quoted_here")
        + ': <mark class="omnirag-quote">'
        + escape(quote, MAX_QUOTE_CHARS)
        + "</mark></span>"
    )


def provenance_html(lang: str, meta: dict[str, Any] | None) -> str:
    """The badge above an answer: quoted from source [n]; the model's answer replaced by a quote
    (auto mode's fallback, with the check's reason); or a model's answer that its sources did not
    confirm (generate mode, with the reason). Nothing for a model's answer that passed, or was not
    checked."""
    meta = meta or {}
    quote = quote_of(meta.get("quote"))
    reason = meta.get("grounding_reason")
    reason = reason if isinstance(reason, str) and reason.strip() else None
    if meta.get("answered_by") == "extract" and quote is not None:
        if meta.get("fallback") is True:
            return (
                '<div class="omnirag-badge omnirag-fallback" role="note">⚠ '
                + t(lang, "quoted_fallback", n=quote["citation"])
                + (f' <span class="omnirag-reason">({escape(reason, 200)})</span>' if reason else "")
                + "</div>"
            )
        return (
            '<div class="omnirag-badge omnirag-extracted" role="note">❝ '
            + t(lang, "quoted", n=quote["citation"])
            + "</div>"
        )
    if meta.get("answered_by") == "model" and meta.get("grounded") is False:
        return (
            '<div class="omnirag-badge omnirag-ungrounded" role="note">⚠ '
            + t(lang, "not_grounded", reason=escape(reason or "–", 200))
            + "</div>"
        )
    return ""


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
    quote: dict[str, Any] | None = None,
) -> str:
    """The block under an answer: degraded notice, the model that answered, rewritten question,
    numbered sources; ``quote`` (an extractive answer's ``{"citation", "text"}``) is marked in its
    source's entry."""
    quote = quote_of(quote)
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
            quoted = quote is not None and quote["citation"] == n
            snippet = snippet_html(lang, c.get("snippet"), quote["text"] if quote and quoted else None)
            items.append(
                f'<li class="omnirag-source{" omnirag-quoted-source" if quoted else ""}" data-n="{n}">'
                + f'<span class="omnirag-n">[{n}]</span> {head}'
                + (f" · <code>{escape(source, 200)}</code>" if source and not url else "")
                + f' · <span class="omnirag-score">{t(lang, "score")} {score_text}</span>'
                + f'<br><span class="omnirag-snippet">{snippet}</span></li>'
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


# A fence line of CommonMark: up to three spaces, then three or more backticks or tildes.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def closed_markdown(text: str) -> str:
    """``text`` (a model's answer, as Markdown) with what it left open closed: a code fence (a
    small model often starts one and stops) and an HTML comment. Anything after it in the same
    message (the sources, their HTML) would otherwise be shown as code, or not at all."""
    open_fence = ""
    for line in text.splitlines():
        found = _FENCE.match(line)
        if not found:
            continue
        marker, rest = found.groups()
        if not open_fence:
            # An opening backtick fence's info string may not hold a backtick.
            if not (marker[0] == "`" and "`" in rest):
                open_fence = marker
        elif marker[0] == open_fence[0] and len(marker) >= len(open_fence) and not rest.strip():
            open_fence = ""
    if open_fence:
        text = text.rstrip("\n") + "\n" + open_fence
    if text.rfind("<!--") > text.rfind("-->"):
        text += " -->"
    return text


def answer_content(
    lang: str, text: str, meta: dict[str, Any] | None, *, reasoning: str = "", streaming: bool = False
) -> str:
    """An answer as the chat shows it: the model's thinking (collapsed), the badge of a quoted (or
    unconfirmed) answer, its text, then the block with the model that answered and the sources, the
    quoted sentence marked in its source. ``streaming``: the thinking is still coming."""
    thinking = thinking_html(lang, reasoning, streaming=streaming and not text)
    badge = provenance_html(lang, meta)
    extractive = meta is not None and meta.get("answered_by") == "extract"
    block = (
        sources_html(
            lang,
            list(meta.get("citations") or []),
            rewritten_query=meta.get("rewritten"),
            degraded=list(meta.get("degraded") or []),
            # An extractive answer names no model: none wrote it (a fallback's names the one replaced).
            model=None if extractive and meta.get("fallback") is not True else meta.get("model"),
            quote=meta.get("quote") if extractive else None,
        )
        if meta
        else ""
    )
    return "\n\n".join(x for x in (thinking, badge, closed_markdown(text), block) if x)


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
