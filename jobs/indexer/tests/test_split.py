"""Splitting: Chinese sentence ends, Markdown headings in metadata, sizes and overlap respected."""

from __future__ import annotations

from omnirag.indexer.split import Splitter


def test_chinese_text_is_cut_at_sentence_ends():
    text = "。".join(f"这是第{i}句话，讲的是检索增强生成的一个细节" for i in range(40)) + "。"
    chunks = Splitter(120, 20).split(text, markdown=False)
    assert len(chunks) > 3
    assert all(len(c.text) <= 120 for c in chunks)
    assert sum(c.text.endswith("。") for c in chunks) >= len(chunks) - 1


def test_markdown_headings_go_into_metadata():
    md = "# Guide\n\nIntro text.\n\n## Install\n\nRun make run.\n\n## Test\n\nRun make test.\n"
    chunks = Splitter(800, 100).split(md, markdown=True)
    sections = [c.metadata.get("section") for c in chunks]
    assert "Guide > Install" in sections and "Guide > Test" in sections
    install = next(c for c in chunks if c.metadata.get("section") == "Guide > Install")
    assert "make run" in install.text


def test_overlap_and_empty_text():
    words = " ".join(f"word{i}" for i in range(400))
    chunks = Splitter(200, 50).split(words, markdown=False)
    assert all(len(c.text) <= 200 for c in chunks)
    first_tail = chunks[0].text.split()[-2:]
    assert any(w in chunks[1].text.split() for w in first_tail)  # consecutive chunks overlap
    assert Splitter(200, 50).split("   \n  ", markdown=False) == []
