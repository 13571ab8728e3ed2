"""Splitting with LangChain's text splitters: Markdown headings go into the chunk's metadata, then a
recursive splitter cuts at paragraph, line, sentence (Chinese 。！？； included) and word breaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]
HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3")]


@dataclass
class Chunk:
    text: str
    metadata: dict[str, Any]


class Splitter:
    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self.recursive = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            separators=SEPARATORS,
            keep_separator="end",
            strip_whitespace=True,
        )
        self.markdown = MarkdownHeaderTextSplitter(headers_to_split_on=HEADERS, strip_headers=False)

    def split(self, text: str, markdown: bool) -> list[Chunk]:
        if not text.strip():
            return []
        sections = self.markdown.split_text(text) if markdown else None
        chunks: list[Chunk] = []
        if sections:
            for section in sections:
                headings = [section.metadata[k] for _, k in HEADERS if k in section.metadata]
                meta = {"section": " > ".join(headings)} if headings else {}
                chunks.extend(Chunk(t, dict(meta)) for t in self.recursive.split_text(section.page_content))
        else:
            chunks = [Chunk(t, {}) for t in self.recursive.split_text(text)]
        return [c for c in chunks if c.text.strip()]
