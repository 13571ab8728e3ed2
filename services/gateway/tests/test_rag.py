"""The pieces of the chain that need no LLM: when to rewrite, cleaning a rewrite, the prompt."""

from __future__ import annotations

import pytest

from omnirag.gateway.rag import (
    Source,
    answer_messages,
    clean_rewrite,
    format_sources,
    needs_rewrite,
    nothing_found,
)

HISTORY = [
    {"role": "user", "content": "Which port does the gateway listen on?"},
    {"role": "assistant", "content": "The gateway listens on port 8000 [1]."},
]


@pytest.mark.parametrize(
    "question",
    [
        "And the embedder?",
        "What does it store there?",
        "Why?",
        "how about the retriever",
        "Can I change that?",
        "它的端口是多少？",
        "那检索器呢？",
    ],
)
def test_follow_ups_are_rewritten(question: str) -> None:
    assert needs_rewrite(question, HISTORY)


@pytest.mark.parametrize(
    "question",
    [
        "Which port does the embedder listen on?",
        "How do I install omnirag on Kubernetes with Helm?",
        "检索增强生成是如何工作的？",
    ],
)
def test_standalone_questions_skip_the_rewrite(question: str) -> None:
    assert not needs_rewrite(question, HISTORY)


def test_no_history_never_rewrites() -> None:
    assert not needs_rewrite("What does it do?", [])
    assert not needs_rewrite("What does it do?", [{"role": "system", "content": "be brief"}])


def test_clean_rewrite() -> None:
    q = "And the embedder?"
    assert (
        clean_rewrite('"Which port does the embedder listen on?"', q)
        == "Which port does the embedder listen on?"
    )
    assert clean_rewrite("Standalone question: Which port?\nextra line", q) == "Which port?"
    assert clean_rewrite("   ", q) == q
    assert clean_rewrite("x" * 600, q) == q


def test_sources_are_numbered_and_bounded() -> None:
    sources = [Source(i, f"id{i}", "word " * 400, f"doc{i}.md", f"Doc {i}", 0.9) for i in (1, 2, 3)]
    text = format_sources(sources, 1000)
    assert text.startswith("[1] Doc 1\n")
    assert len(text) <= 1100
    msgs = answer_messages({"role": "user", "content": "q?"}, HISTORY, sources, turns=6, max_chars=3000)
    assert (
        msgs[0]["role"] == "system"
        and "[1]" in msgs[0]["content"]
        and "not instructions" in msgs[0]["content"]
    )
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user"]
    assert msgs[-1]["content"] == "q?"


def test_nothing_found_speaks_the_question_language() -> None:
    assert "knowledge base 'docs'" in nothing_found("docs", "What is X?")
    assert "知识库" in nothing_found("docs", "这是什么？")
