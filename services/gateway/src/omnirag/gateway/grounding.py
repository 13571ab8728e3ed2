"""Does an answer follow from the sources it cites? A check cheap enough for every RAG answer.

It runs on the answer's text and the sources' text alone (no model: it must keep up with the
cluster's 8B as well as the local SmolLM2, and cost nothing next to them). An answer is grounded
when all of these hold, checked in this order (the first failure is the reason):

1. it says something ("empty");
2. it is not degenerate (:mod:`omnirag.gateway.repetition`: "repetition", "echoes the question");
3. it is in the question's language: Chinese or not, counted in units (a CJK character or a Latin
   word each, so "使用 Redis" stays Chinese), over the whole answer and over each of its longer
   sentences, which catches a switch midway ("answer language en, question zh");
4. every number and quoted term in it occurs in the source sentence its own sentence matches best
   ("number 8001 is not in the cited sources"), every name in the sources it cites.
   Names are capitalised words (not a sentence's first word unless it has a capital or a digit
   inside, like "FastAPI" or "SmolLM2"), Latin words inside Chinese text, and
   the proper nouns jieba tags in Chinese (persons, places, organisations). Terms the question
   itself uses are allowed: "Does omnirag use Kafka?" — "No, omnirag does not use Kafka" is right;
5. at least half of its content words occur in the cited sources (or the question): an invented
   sentence without a single number or name still fails ("only 30% of its words are in the cited
   sources");
6. a question that asks for a number (which port, how many…) gets one ("asked for a number, states
   none").

An answer that cites no source is checked against all the given sources, as if it cited them all:
a small model often states a right answer without the "[1]". It fails with "cites no source" only
when it also fails check 5 — it cites nothing and what it says is not in the sources either.
Without sources (retrieval down) nothing can be checked: the caller reports ``grounded: null``.
Numbers written in Chinese numerals are not compared (only digits are).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import rjieba

from omnirag.core.text import CJK, tokenize
from omnirag.gateway.extract import QUESTION_WORDS, sentences
from omnirag.gateway.repetition import degenerate

_CITATION = re.compile(r"(?<![A-Za-z_])\[\d{1,6}\]")
# Digits not inside a word: "bge-m3" and "SmolLM2" are names (checked as names), not numbers.
_NUMBER = re.compile(r"(?<![A-Za-z\d.,])\d+(?:[.,:]\d+)*(?![A-Za-z\d])")
_LIST_MARKER = re.compile(r"^\s*\d{1,3}[.)]\s", re.M)
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[.\-_][A-Za-z0-9]+)*")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]?")
_QUOTED = re.compile(
    r"“([^”\n]{1,120})”|\"([^\"\n]{1,120})\"|「([^」\n]{1,120})」|《([^》\n]{1,120})》|`([^`\n]{1,120})`"
)
# jieba's tags for proper nouns: person, place, organisation, other proper noun.
_PROPER_TAGS = {"nr", "nrt", "nrfg", "ns", "nt", "nz"}
MIN_SUPPORT = 0.5
_MIN_WORDS_FOR_SUPPORT = 4
_MIN_UNITS_FOR_LANGUAGE = 4
_MIN_UNITS_PER_SENTENCE = 6


class Cited(Protocol):
    @property
    def number(self) -> int: ...
    @property
    def text(self) -> str: ...


class Verdict(NamedTuple):
    grounded: bool
    reason: str | None


def language(text: str) -> str | None:
    """ "zh" or "en" by units (CJK characters against Latin words), None with too few to tell."""
    cjk = len(_CJK_CHAR.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    if cjk + latin < _MIN_UNITS_FOR_LANGUAGE:
        return None
    return "zh" if cjk >= latin else "en"


def _sentences(text: str) -> list[str]:
    return [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _numbers(text: str) -> list[str]:
    text = _LIST_MARKER.sub(" ", _CITATION.sub(" ", text))
    return [re.sub(r"(?<=\d),(?=\d{3}\b)", "", n).rstrip(".,:") for n in _NUMBER.findall(text)]


def _names(text: str) -> list[str]:
    """Capitalised words and Latin words inside Chinese text; jieba's proper nouns in Chinese."""
    names: list[str] = []
    for sentence in _sentences(_CITATION.sub(" ", text)):
        chinese = bool(CJK.search(sentence))
        for i, m in enumerate(_LATIN_WORD.finditer(sentence)):
            word = m.group()
            inner_caps = any(c.isupper() or c.isdigit() for c in word[1:])
            if chinese or inner_caps or (word[0].isupper() and i > 0 and word != "I"):
                names.append(word)
        if chinese:
            for run in CJK.finditer(sentence):
                names += [w for w, tag in rjieba.tag(run.group()) if tag in _PROPER_TAGS and len(w) > 1]
    return list(dict.fromkeys(names))


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)]


def _has(haystack: str, term: str) -> bool:
    """``term`` in the normalised text; a Latin term as a whole word (a prefix of a longer word
    too: "listen" is in "listens")."""
    term = _norm(term)
    if not term:
        return True
    if CJK.search(term):
        return term in haystack
    return re.search(r"(?<![a-z0-9])" + re.escape(term), haystack) is not None


def _support(answer: str, haystack: str) -> tuple[float, int]:
    words = [t for t in tokenize(_CITATION.sub(" ", answer)) if not t.isdigit()]
    if not words:
        return 1.0, 0
    found = sum(1 for w in words if _has(haystack, w) or (len(w) > 4 and _has(haystack, w[:-2])))
    return found / len(words), len(words)


def _context_words(text: str) -> set[str]:
    return {t for t in tokenize(text) if not t.isdigit() and t not in QUESTION_WORDS}


def _out_of_context(text: str, question: str, sources: Sequence[Cited]) -> tuple[list[str], list[str]]:
    """The answer's numbers and quoted terms that its sources do not state in the same context.

    Each must occur in the source sentence that best matches the answer's sentence (the most
    content words in common, the question's words counted in: a bare "8000 [1]" is about what
    was asked; sentences as the extractive answer cuts them, hard-wrapped lines joined). Anywhere
    in the cited text is not enough: a chunk listing every port has 8001 in it, for the embedder,
    and "the gateway listens on port 8001" must still fail; a page naming `make test` and `make run`
    does not make "`make test` starts the local stack" true."""
    asked_numbers = set(_numbers(question))
    q_norm = _norm(question)
    q_words = _context_words(question)
    cut = [(s, h) for src in sources for s, h in sentences(src.text)]
    sentence_words = [_context_words(s + " " + h) for s, h in cut]
    sentence_numbers = [set(_numbers(s)) for s, _ in cut]
    sentence_text = [_norm(s) for s, _ in cut]
    every_number = set().union(*sentence_numbers) if sentence_numbers else set()
    every_text = " ".join(sentence_text)
    numbers_missing: list[str] = []
    quotes_missing: list[str] = []
    for sentence in _sentences(text):
        numbers = [n for n in _numbers(sentence) if n not in asked_numbers]
        quotes = [t for t in _quoted(sentence) if not _has(q_norm, t)]
        if not numbers and not quotes:
            continue
        context = _context_words(sentence) | q_words
        overlaps = [len(context & words) for words in sentence_words]
        best = max(overlaps, default=0)
        chosen = [i for i, o in enumerate(overlaps) if o == best] if best > 0 else []
        allowed_numbers = set().union(*(sentence_numbers[i] for i in chosen)) if chosen else every_number
        allowed_text = " ".join(sentence_text[i] for i in chosen) if chosen else every_text
        numbers_missing += [n for n in numbers if n not in allowed_numbers and n not in numbers_missing]
        quotes_missing += [t for t in quotes if not _has(allowed_text, t) and t not in quotes_missing]
    return numbers_missing, quotes_missing


# Questions whose answer is a number: the port, the status code, how many… An answer to one that
# states no number at all has not answered ("The embedder answers when the queue is full").
_ASKS_NUMBER = re.compile(
    r"\b(?:which|what)\s+(?:\w+\s+)?(?:port|status(?:\s+code)?|code|year|number|size|limit|timeout|version)s?\b"
    r"|\bhow\s+(?:many|much|long|big|large|old)\b|多少|几[个年天次岁种条项]|哪一?年",
    re.I,
)
_ANY_NUMBER = re.compile(r"\d|[零一二三四五六七八九十百千万亿两]")


def _listing(kind: str, terms: list[str], where: str) -> str:
    shown = ", ".join(f"'{t}'" for t in terms[:3])
    return f"{kind} {shown} not in {where}"


def check(answer: str, question: str, sources: Sequence[Cited], cited: Sequence[int]) -> Verdict:
    """The verdict on ``answer`` (a RAG answer, thinking excluded) given the ``sources`` the prompt
    numbered and the numbers it ``cited`` (see the module's docstring)."""
    text = _CITATION.sub(" ", answer)
    if not any(ch.isalnum() for ch in text):
        return Verdict(False, "empty")
    reason = degenerate(answer, question)
    if reason:
        return Verdict(False, reason)
    asked = language(question)
    if asked is not None:
        said = [language(answer)] + [
            language(s)
            for s in _sentences(text)
            if len(_CJK_CHAR.findall(s)) + len(_LATIN_WORD.findall(s)) >= _MIN_UNITS_PER_SENTENCE
        ]
        other = next((lang for lang in said if lang is not None and lang != asked), None)
        if other:
            return Verdict(False, f"answer language {other}, question {asked}")
    if not sources:
        return Verdict(True, None)
    chosen = [s for s in sources if s.number in set(cited)] or list(sources)
    where = "the cited sources" if cited else "the sources"
    haystack = _norm(" ".join(s.text for s in chosen))
    q = _norm(question)
    numbers, quotes = _out_of_context(text, question, chosen)
    if numbers:
        return Verdict(False, f"number {numbers[0]} is not in {where}")
    names = [n for n in _names(answer) if not _has(haystack, n) and not _has(q, n)]
    if names:
        return Verdict(False, _listing("names", names, where))
    if quotes:
        missing = [t for t in quotes if not _has(haystack, t)]
        if missing:
            return Verdict(False, _listing("quoted", missing, where))
        return Verdict(False, _listing("quoted", quotes, "the sentence it matches in " + where))
    share, words = _support(answer, haystack + " " + q)
    if words >= _MIN_WORDS_FOR_SUPPORT and share < MIN_SUPPORT:
        if not cited:
            return Verdict(False, "cites no source")
        return Verdict(False, f"only {round(share * 100)}% of its words are in {where}")
    if _ASKS_NUMBER.search(question) and not _ANY_NUMBER.search(text):
        return Verdict(False, "asked for a number, states none")
    return Verdict(True, None)
