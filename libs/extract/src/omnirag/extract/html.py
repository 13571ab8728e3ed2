"""HTML to a title and main text (Markdown-ish), plus what a crawler needs from the same parse.

The main text is trafilatura's (boilerplate such as menus, footers and comment threads left out,
tables kept, headings as Markdown ``#`` lines); where it finds none, a tag-stripped text of the page
without scripts, navigation, headers, footers, asides and forms. The title is the page's own as
trafilatura reads it (``og:title``, else ``<title>`` without a trailing " | Site name", else the
first heading), else ``<title>``, else the first ``<h1>``; None when there is none, for the caller's
fallback. Links (``a``/``area`` hrefs, navigation included), ``<base href>`` and ``<meta name=…>``
values come from the same parse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from html.parser import HTMLParser

from omnirag.extract.text import normalize_text

__all__ = ["MAX_LINKS", "HtmlDocument", "html_document"]

log = logging.getLogger(__name__)

#: Links kept from one page; a page with more is a link farm, not documentation.
MAX_LINKS = 5000
_MAX_META = 64

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form"}
_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "br", "li", "ul", "ol", "table", "tr", "td", "th",
    "blockquote", "pre", "hr", "dl", "dt", "dd", "figure", "figcaption",
    "h1", "h2", "h3", "h4", "h5", "h6",
}  # fmt: skip
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"}


@dataclass
class HtmlDocument:
    title: str | None
    text: str
    links: list[str] = field(default_factory=list)
    base: str | None = None
    #: ``<meta name=… content=…>`` by lower-case name (the first 64 names).
    meta: dict[str, str] = field(default_factory=dict)


class _Scanner(HTMLParser):
    """``<title>``, the first ``<h1>``, a tag-stripped text, links, ``<base>`` and ``<meta>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title_parts: list[str] = []
        self.h1_parts: list[str] = []
        self.h1_done = False
        self.parts: list[str] = []
        self.links: list[str] = []
        self.base: str | None = None
        self.meta: dict[str, str] = {}
        self._in_title = False
        self._in_h1 = False
        self._skip_depth = 0

    def _attributes(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area", "base", "meta"):
            return
        values = {name.lower(): (value or "") for name, value in attrs}
        if tag in ("a", "area") and values.get("href") and len(self.links) < MAX_LINKS:
            self.links.append(values["href"])
        elif tag == "base" and self.base is None and values.get("href"):
            self.base = values["href"]
        elif tag == "meta" and values.get("name") and len(self.meta) < _MAX_META:
            self.meta.setdefault(values["name"].lower(), values.get("content", ""))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attributes(tag, attrs)
        if tag in _VOID_TAGS:
            if tag == "br":
                self.parts.append("\n")
            return
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
            return
        if tag == "title":
            self._in_title = True
        elif tag == "h1" and not self.h1_done:
            self._in_h1 = True
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"td", "th"} else " ")
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456" and not self._skip_depth:
            self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if tag == "title":
            self._in_title = False
        elif tag == "h1" and self._in_h1:
            self._in_h1 = False
            self.h1_done = bool("".join(self.h1_parts).strip())
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"td", "th"} else " ")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skip_depth:
            return
        if self._in_h1:
            self.h1_parts.append(data)
        self.parts.append(data)

    @property
    def title(self) -> str | None:
        for parts in (self.title_parts, self.h1_parts):
            value = " ".join("".join(parts).split())
            if value:
                return value
        return None

    @property
    def text(self) -> str:
        raw = "".join(self.parts)
        lines = [" ".join(line.split()) for line in raw.split("\n")]
        return normalize_text("\n".join(lines))


def html_document(markup: str, url: str | None = None) -> HtmlDocument:
    """Title, main text, links, ``<base>`` and ``<meta>`` of decoded HTML (see the module doc).
    ``url``: where the page came from, if it did (helps trafilatura with relative metadata).
    CPU work: call it off an event loop."""
    scanner = _Scanner()
    try:
        scanner.feed(markup)
        scanner.close()
    except Exception as exc:  # html.parser is lenient; this is a safety net for odd pages
        log.debug("html scan failed on %s: %s", url or "a document", exc)

    import trafilatura  # lxml underneath: loaded by the first page, not by every importer

    text: str | None = None
    try:
        text = trafilatura.extract(
            markup,
            url=url,
            output_format="markdown",
            include_tables=True,
            include_comments=False,
            favor_recall=True,
        )
    except Exception as exc:
        log.debug("trafilatura failed on %s: %s", url or "a document", exc)
    body = normalize_text(text) if text else ""
    if not body.strip():
        body = scanner.text
    title: str | None = None
    try:
        metadata = trafilatura.extract_metadata(markup, default_url=url)
        found = metadata.title if metadata is not None else None
        title = " ".join((found or "").split()) or None
    except Exception as exc:
        log.debug("trafilatura metadata failed on %s: %s", url or "a document", exc)
    return HtmlDocument(
        title=title or scanner.title,
        text=body,
        links=scanner.links,
        base=scanner.base,
        meta=scanner.meta,
    )
