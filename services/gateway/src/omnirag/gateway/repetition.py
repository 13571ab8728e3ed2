"""Degenerate output: an answer that loops on the same words, or that only repeats the question.

Small models (the embedded SmolLM2-135M above all) fall into loops — "port 8000. port 8000. port
8000." — and run to their token cap, which is most of the latency of a bad answer; or they give the
question back as its answer. Both are caught on the answer's units: each CJK character is one unit
(Chinese has no spaces, and its loops are loops of characters), every other run of letters and
digits is one lower-cased word; punctuation and citations do not count.

- ``degenerate(text, question)`` says why a finished answer is degenerate, or None.
- ``LoopGuard`` is fed a streamed answer piece by piece and says when it has started to loop, so
  the gateway stops reading the LLM (which closes the upstream connection) instead of waiting for
  the cap. A loop is a block of units repeated back to back: at least 3 times, and at least
  ``MIN_LOOP_UNITS`` units in all, so "very very" or a reduplicated Chinese word is not one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+", re.UNICODE)
_CITATION = re.compile(r"\[\d{1,6}\]")
MAX_PERIOD = 40  # the longest repeated block looked for, in units (a sentence or two)
MIN_LOOP_UNITS = 8  # a loop covers at least this many units (a 1-unit block: 8 times)
MIN_COPIES = 3
# A longer answer whose 4-grams are mostly repeats loops, even when not back to back.
_NGRAM = 4
_MIN_NGRAMS = 24
_MIN_DISTINCT_SHARE = 0.5


def units(text: str) -> list[str]:
    return [m.group().lower() for m in _UNIT.finditer(_CITATION.sub(" ", text))]


def _copies_needed(period: int) -> int:
    return max(MIN_COPIES, -(-MIN_LOOP_UNITS // period))


def _loops_at(seq: list[str], end: int) -> int:
    """The period of a loop that ends at ``seq[:end]``, or 0."""
    for period in range(1, MAX_PERIOD + 1):
        copies = _copies_needed(period)
        if end < period * copies:
            break
        block = seq[end - period : end]
        if all(seq[end - (i + 1) * period : end - i * period] == block for i in range(1, copies)):
            return period
    return 0


def looping(text: str) -> bool:
    """True when ``text`` has a loop anywhere, or is mostly repeated 4-grams."""
    seq = units(text)
    if any(_loops_at(seq, end) for end in range(len(seq), 0, -1)):
        return True
    grams = [tuple(seq[i : i + _NGRAM]) for i in range(len(seq) - _NGRAM + 1)]
    return len(grams) >= _MIN_NGRAMS and len(set(grams)) / len(grams) < _MIN_DISTINCT_SHARE


def echoes(text: str, question: str) -> bool:
    """True when the answer says (almost) nothing but the question's own words: every unit but at
    most one in ten is the question's, and it repeats most of the question."""
    # Units, not index tokens: "no" and "not" are stopwords there, and they are the whole answer
    # in "No, the gateway does not use Kafka".
    said = units(text)
    asked = set(units(question))
    if len(said) < 2 or not asked:
        return False
    new = [t for t in said if t not in asked]
    covered = len(asked & set(said)) / len(asked)
    return len(new) <= len(said) // 10 and covered >= 0.6


def degenerate(text: str, question: str) -> str | None:
    """Why a finished answer is degenerate ("repetition", "echoes the question"), or None."""
    if looping(text):
        return "repetition"
    if echoes(text, question):
        return "echoes the question"
    return None


_CLOSE = re.compile(r"(?:\s*\[\d{1,6}\])*[.!?;。！？；]?")


def _after_unit(text: str, end: int) -> int:
    """``end`` moved past the citations and the one stop that close a sentence there."""
    m = _CLOSE.match(text, end)
    return m.end() if m else end


@dataclass
class LoopGuard:
    """Fed a streamed answer piece by piece; ``feed`` turns True once it loops. ``keep`` is then the
    length of the text fed so far that holds the loop's block once (what is worth keeping)."""

    text: str = ""
    keep: int | None = None
    _seq: list[str] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)  # end offset in ``text`` of each unit
    _scanned: int = 0  # characters already split into units (a unit may continue in the next piece)

    def feed(self, piece: str) -> bool:
        if self.keep is not None:
            return True
        self.text += piece
        # The last unit may be cut in two by the piece boundary: units are taken only up to the
        # last character that cannot continue one.
        tail = len(self.text)
        while tail > self._scanned and _UNIT.match(self.text[tail - 1]):
            tail -= 1
        # Nor is a citation cut in two ("[1" … "]") read as the word "1".
        opened = self.text.rfind("[", self._scanned, tail)
        if opened >= 0 and "]" not in self.text[opened:tail] and len(self.text) - opened <= 8:
            tail = opened
        if tail <= self._scanned:
            return False
        fresh = _CITATION.sub(lambda c: " " * len(c.group()), self.text[self._scanned : tail])
        for m in _UNIT.finditer(fresh):
            self._seq.append(m.group().lower())
            self._ends.append(self._scanned + m.end())
            period = _loops_at(self._seq, len(self._seq))
            if period:
                copies = _copies_needed(period)
                first_end = len(self._seq) - (copies - 1) * period
                self.keep = _after_unit(self.text, self._ends[first_end - 1])
                return True
        self._scanned = tail
        return False
