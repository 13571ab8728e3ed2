"""Markdown: the title of a document and its body without YAML front matter."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MarkdownDocument", "markdown_document", "markdown_title"]

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX_H1 = re.compile(r"^\s{0,3}#[ \t]+(.+?)[ \t]*#*[ \t]*$")
_SETEXT_H1 = re.compile(r"^\s{0,3}=+[ \t]*$")


@dataclass(frozen=True)
class MarkdownDocument:
    title: str | None
    text: str


def markdown_title(text: str) -> str | None:
    """The first level-1 heading (ATX ``# x`` or setext ``x\\n===``), ignoring fenced code."""
    in_fence = False
    previous = ""
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            previous = ""
            continue
        if in_fence:
            continue
        match = _ATX_H1.match(line)
        if match:
            return match.group(1).strip()
        if _SETEXT_H1.match(line) and previous.strip():
            return previous.strip()
        previous = line
    return None


def markdown_document(text: str) -> MarkdownDocument:
    """Title and body of Markdown text (already normalised): a YAML front matter's ``title`` wins
    over the first level-1 heading, and the front matter is dropped from the body (metadata, not
    content). No title: None, for the caller's fallback (a file name, a URL)."""
    title: str | None = None
    front = _FRONT_MATTER.match(text)
    if front:
        try:
            import yaml

            meta = yaml.safe_load(front.group(1))
        except Exception:
            meta = None
        if isinstance(meta, dict):
            value = meta.get("title")
            if isinstance(value, str | int | float) and str(value).strip():
                title = str(value).strip()
            text = text[front.end() :].lstrip("\n")
    return MarkdownDocument(title=title or markdown_title(text), text=text)
