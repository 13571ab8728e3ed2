"""Words of a text for lexical matching, in English and Chinese: one tokenizer for every user.

The index's BM25 (:mod:`omnirag.index.sparse`) and the gateway's answer checks (grounding, the
extractive answer) must split text the same way: a term the index matched has to be the term the
gateway looks for in a source. It lives here, in the lowest package both share, and stays light
(rjieba is a small Rust extension; the stopword list is copied, not imported from bm25s, which
would pull numpy and scipy into every service).

CJK runs are cut by jieba (rjieba), every other run of letters and digits is one lower-cased word,
and English stopwords are dropped. Changing what ``tokenize`` returns changes the index format:
bump ``TOKENIZER_NAME`` then (manifests record it).
"""

from __future__ import annotations

import re

import rjieba

TOKENIZER_NAME = "rjieba+words-v1"
# Han (with extension A and compatibility ideographs), kana and hangul.
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# bm25s.tokenization.STOPWORDS_EN, which the index used before the tokenizer moved here: the same
# list, so the same tokens.
STOPWORDS_EN = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no"}
    | {"not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this"}
    | {"to", "was", "will", "with"}
)


def tokenize(text: str) -> list[str]:
    """jieba words for CJK runs, lower-cased words for the rest; English stopwords dropped."""
    tokens: list[str] = []
    pos = 0
    for match in CJK.finditer(text):
        tokens.extend(_words(text[pos : match.start()]))
        tokens.extend(t for t in rjieba.cut(match.group()) if t.strip())
        pos = match.end()
    tokens.extend(_words(text[pos:]))
    return tokens


def _words(text: str) -> list[str]:
    return [w for w in (m.group().lower() for m in _WORD.finditer(text)) if w not in STOPWORDS_EN]


def cjk_share(text: str) -> float:
    """Share of the letters of ``text`` that are CJK: how Chinese (or Japanese, Korean) a text is."""
    letters = sum(1 for ch in text if ch.isalnum())
    if not letters:
        return 0.0
    return sum(len(m.group()) for m in CJK.finditer(text)) / letters


def language(text: str) -> str:
    """ "zh" when most of the letters of ``text`` are CJK, else "en": the two languages the project
    tells apart (the BM25 tokenizer's and the answer checks' split)."""
    return "zh" if cjk_share(text) >= 0.5 else "en"
