"""The extractive answer: the sentence (or the few adjacent ones) of the retrieved sources that
best answers the question, quoted with its citation. No LLM: instant, and true to its source by
construction, which is what a small local model is not.

1. The sources are cut into candidates: sentences in English and Chinese (a sentence ends at
   . ! ? 。！？； followed by a space, a CJK character or the end; a Markdown list item, heading or
   code line is one candidate of its own; hard-wrapped lines of a paragraph are joined first).
2. Each is scored by BM25 over the candidates (the shared tokenizer of :mod:`omnirag.core.text`,
   question words such as "which" or 什么 left out), plus, for Chinese, the share of the
   question's character bigrams it has (jieba may cut the question and the source differently),
   plus the embedder's cosine similarity when the embedder's model covers the language (the
   caller reads its ``/v1/info`` languages; all-MiniLM-L6-v2 is English-only, so never for
   Chinese) and it answers — without it the lexical score decides alone. The retriever's rank
   breaks near-ties.
3. The best candidate is widened to its neighbour when it cannot stand alone: too short, ending
   in ":" (a command or a list follows), or opening with a word that points back ("It", "这").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from omnirag.core.text import CJK, cjk_share, tokenize

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]

# Question words: they say what is asked, not what the answer's sentence contains.
_QUESTION_EN = "what which who whom whose when where why how does do did can could should would is are was"
_QUESTION_MORE = "were has have much many there any tell me please explain describe"
_QUESTION_ZH = "什么 哪 哪个 哪些 哪里 哪儿 多少 几 吗 呢 吧 怎么 怎样 如何"
_QUESTION_ZH_MORE = "为什么 为何 谁 是 的 了 请 问 请问"
QUESTION_WORDS = frozenset(" ".join((_QUESTION_EN, _QUESTION_MORE, _QUESTION_ZH, _QUESTION_ZH_MORE)).split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(\[A-Z0-9\u4e00-\u9fff`])|(?<=[。！？；])")
_BLOCK_LINE = re.compile(r"^\s*(?:[-*+]\s|\d{1,3}[.)]\s|#{1,6}\s|\||>|```)")
_REFERRING = re.compile(
    r"^(?:it|its|this|that|these|those|they|then|also|here|它|其|这|那|此|该|他|她)\b", re.I
)
_MAX_CANDIDATES = 400
_MAX_HEADING_CHARS = 120
_EMBED_CANDIDATES = 48
_MAX_QUOTE_CHARS = 600
_K1, _B = 1.2, 0.75


class Numbered(Protocol):
    @property
    def number(self) -> int: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Quote:
    """The extracted text and the 1-based number of the source it was taken from."""

    citation: int
    text: str
    # Set when the embedder was asked and failed: the caller reports it degraded.
    embedder_error: Exception | None = None


@dataclass(frozen=True)
class _Candidate:
    source: int  # index into the sources
    position: int  # index of the sentence in its source
    text: str
    heading: str


def sentences(text: str) -> list[tuple[str, str]]:
    """``text`` cut into sentences (see the module's docstring), each with the heading of its
    section. Headings are not candidates themselves (an FAQ's heading is the question, not its
    answer) but lend their words to the sentences under them."""
    out: list[tuple[str, str]] = []
    heading = ""

    def add(paragraph: list[str]) -> None:
        out.extend((s, heading) for s in _split(" ".join(paragraph)))

    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        paragraph: list[str] = []
        for line in lines:
            if not _BLOCK_LINE.match(line):
                paragraph.append(line.strip())
                continue
            add(paragraph)
            paragraph = []
            stripped = line.strip()
            if stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
                if len(heading) <= _MAX_HEADING_CHARS:
                    continue
                # A heading run into its text (the lines of a chunk joined): the words are text.
                out += [(s, "") for s in _split(heading)]
                heading = ""
                continue
            stripped = re.sub(r"^(?:[-*+]|\d{1,3}[.)]|>)\s+", "", stripped.strip("`").strip())
            if stripped and not set(stripped) <= set("|-: "):
                out.append((stripped, heading))
        add(paragraph)
    return [(s, h) for s, h in out if any(ch.isalnum() for ch in s)]


def _split(paragraph: str) -> list[str]:
    # A CJK line break inside a paragraph is no space: join without one.
    paragraph = re.sub(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", paragraph)
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _terms(text: str) -> list[str]:
    return [_stem(t) for t in tokenize(text) if t not in QUESTION_WORDS]


def _stem(word: str) -> str:
    """A crude English stem ("tests", "testing" → "test"): enough for overlap, harmless for CJK."""
    if len(word) > 4 and word.isascii():
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                return word[: -len(suffix)]
    return word


def _bigrams(text: str) -> set[str]:
    runs = [m.group() for m in CJK.finditer(text)]
    return {run[i : i + 2] for run in runs for i in range(len(run) - 1)}


def _bm25(query: list[str], docs: list[list[str]]) -> list[float]:
    n = len(docs)
    if not n or not query:
        return [0.0] * n
    avg = sum(len(d) for d in docs) / n or 1.0
    df = Counter(t for d in docs for t in set(d))
    scores = []
    for doc in docs:
        tf = Counter(doc)
        score = 0.0
        for term in set(query):
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] * (_K1 + 1) / (tf[term] + _K1 * (1 - _B + _B * len(doc) / avg))
        scores.append(score)
    return scores


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


async def extract(question: str, sources: Sequence[Numbered], embed: Embed | None = None) -> Quote | None:
    """The best passage of ``sources`` for ``question`` (None only when they have no text at all).
    ``embed`` (texts → vectors): pass None when the embedder's model does not cover the question's
    language (the caller knows its languages)."""
    candidates = [
        _Candidate(i, j, s, h)
        for i, src in enumerate(sources)
        for j, (s, h) in enumerate(sentences(src.text))
    ][:_MAX_CANDIDATES]
    if not candidates:
        return None
    chinese = cjk_share(question) >= 0.5
    lexical = _bm25(_terms(question), [_terms(c.text) + _terms(c.heading) for c in candidates])
    top = max(lexical) or 1.0
    scores = [s / top for s in lexical]
    if chinese:
        asked = _bigrams(question)
        if asked:
            scores = [
                s + len(asked & _bigrams(c.heading + c.text)) / len(asked)
                for s, c in zip(scores, candidates, strict=True)
            ]
    # A passage in the question's language is what the answer must be in (grounding checks it).
    same = [(cjk_share(c.text) >= 0.3) == chinese for c in candidates]
    scores = [s if ok else s * 0.5 for s, ok in zip(scores, same, strict=True)]
    error: Exception | None = None
    if embed is not None:
        # Only the lexically best few: the embedder's time grows with the texts sent.
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:_EMBED_CANDIDATES]
        try:
            vectors = await embed([question] + [candidates[i].text for i in order])
        except Exception as exc:
            error = exc
        else:
            if len(vectors) == len(order) + 1:
                for i, vector in zip(order, vectors[1:], strict=True):
                    scores[i] += _cosine(vectors[0], vector)
    # The retriever's order breaks near-ties: its first source is its best guess.
    scores = [s - 0.02 * c.source for s, c in zip(scores, candidates, strict=True)]
    best = max(range(len(candidates)), key=lambda i: scores[i])
    chosen = candidates[best]
    source_sentences = [s for s, _ in sentences(sources[chosen.source].text)]
    start = end = chosen.position
    if _REFERRING.match(chosen.text) and start > 0:
        start -= 1
    short = len(chosen.text) < (8 if chinese else 20)
    if (short or chosen.text.rstrip().endswith((":", "："))) and end + 1 < len(source_sentences):
        end += 1
    text = " ".join(source_sentences[start : end + 1])
    if cjk_share(text) >= 0.5:
        text = re.sub(r"(?<=[\u3000-\u303f\uff00-\uffef\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", text)
    if len(text) > _MAX_QUOTE_CHARS:
        text = text[:_MAX_QUOTE_CHARS].rstrip() + "…"
    return Quote(citation=sources[chosen.source].number, text=text, embedder_error=error)


def quoted_answer(quote: Quote, question: str, *, fallback: bool, unanswered: bool = False) -> str:
    """The text the client gets: the passage and its citation; for a fallback, saying that the
    model's answer was replaced or, ``unanswered``, that the model does not answer in the
    question's language (in that language)."""
    chinese = cjk_share(question) >= 0.5
    if not fallback:
        return f"{quote.text} [{quote.citation}]"
    if unanswered and chinese:
        return f"当前模型不擅长用中文回答；最接近的原文，出自 [{quote.citation}]：“{quote.text}”"
    if unanswered:
        return (
            "The model does not answer in this language; the closest passage, "
            f"from [{quote.citation}]: “{quote.text}”"
        )
    if chinese:
        return f"模型的回答与其来源不符；最接近的原文，出自 [{quote.citation}]：“{quote.text}”"
    return (
        "The model's answer did not match its sources; the closest passage, "
        f"from [{quote.citation}]: “{quote.text}”"
    )


def no_passage(question: str) -> str:
    """What an extractive answer says when there is nothing to quote (the search is down)."""
    if cjk_share(question) >= 0.5:
        return "文档检索暂时不可用，没有可以引用的原文。"
    return "The document search is unavailable right now, so there is no passage to quote."
