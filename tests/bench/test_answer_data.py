"""The data of ``make eval-answers`` (bench/data/) and its scoring, checked cheaply in the normal suite.

The eval itself runs for an hour through the real stack and stays out of ``make test``; what can be
wrong in its inputs is checked here in milliseconds: a gold answer that the knowledge base does not
contain (a question no system could answer right, which would lower every mode's score), a follow-up
that the gateway would not rewrite (it would not test the rewrite), a "standalone" question that
itself leans on history, a conversation without its standalone version, and the normalisation that
decides "contains the gold answer".
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from omnirag.gateway.rag import needs_rewrite

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "examples/knowledge-base"
HISTORY = [{"role": "user", "content": "a first question"}, {"role": "assistant", "content": "an answer"}]


def _load_eval() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_answers", REPO / "bench/eval_answers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


ev = _load_eval()
ENGLISH = json.loads(ev.EN_FILE.read_text(encoding="utf-8"))
CONVERSATIONS = json.loads(ev.CONVERSATIONS_FILE.read_text(encoding="utf-8"))["conversations"]


def kb_text(name: str) -> str:
    return ev.normalise((DOCS / name).read_text(encoding="utf-8"))


def test_the_english_set_has_thirty_distinct_questions_over_the_example_knowledge_base() -> None:
    questions = ENGLISH["questions"]
    assert len(questions) == 30
    assert len({q["id"] for q in questions}) == 30
    assert len({ev.normalise(q["question"]) for q in questions}) == 30
    assert ENGLISH["collection"] == "docs"  # what config/knowledge-bases.yaml names docs/


@pytest.mark.parametrize("q", ENGLISH["questions"], ids=lambda q: q["id"])
def test_every_english_gold_answer_occurs_in_the_example_knowledge_base(q: dict) -> None:
    assert q["gold"], "no gold answer"
    text = kb_text(q["source"])
    missing = [g for g in q["gold"] if ev.normalise(g) not in text]
    assert not missing, f"{q['id']}: {missing} not in docs/{q['source']}"


def test_there_are_fifteen_conversations_per_language_each_with_a_standalone_question() -> None:
    langs = [c["lang"] for c in CONVERSATIONS]
    assert langs.count("en") == 15 and langs.count("zh") == 15
    assert len({c["id"] for c in CONVERSATIONS}) == 30
    for c in CONVERSATIONS:
        assert c["first"].strip() and c["followup"].strip() and c["gold"], c["id"]
        assert c["standalone"].strip(), f"{c['id']} has no standalone question"
        assert ev.normalise(c["standalone"]) != ev.normalise(c["followup"]), c["id"]


@pytest.mark.parametrize("c", CONVERSATIONS, ids=lambda c: c["id"])
def test_each_follow_up_leans_on_the_first_turn_and_its_standalone_version_does_not(c: dict) -> None:
    """The gateway's own rule decides whether it rewrites: a follow-up it would search as it is
    would not measure the rewrite, and a standalone question it would rewrite is not standalone."""
    assert needs_rewrite(c["followup"], HISTORY), (
        f"{c['id']}: the gateway would not rewrite {c['followup']!r}"
    )
    assert not needs_rewrite(c["standalone"], HISTORY), f"{c['id']}: {c['standalone']!r} needs history"


@pytest.mark.parametrize("c", [c for c in CONVERSATIONS if c["lang"] == "en"], ids=lambda c: c["id"])
def test_english_follow_up_gold_answers_occur_in_the_knowledge_base(c: dict) -> None:
    text = kb_text(c.get("gold_source", c["source"]))
    assert all(ev.normalise(g) in text for g in c["gold"]), c["id"]


def test_the_cmrc_trial_split_ships_unchanged_in_the_repository() -> None:
    digest = hashlib.sha256(ev.DEFAULT_CMRC.read_bytes()).hexdigest()
    assert digest == "f3fae95b57da8e03afb2b57467dd221417060ef4d82db13bf22fc88589f3a6f3"
    assert "CC BY-SA 4.0" in (ev.DEFAULT_CMRC.parent / "README.md").read_text()


def test_chinese_follow_up_gold_answers_occur_in_their_cmrc_paragraph() -> None:
    paragraphs = ev.cmrc_paragraphs(ev.DEFAULT_CMRC)
    for c in (c for c in CONVERSATIONS if c["lang"] == "zh"):
        text = ev.normalise(paragraphs[c["passage"]]["context"])
        assert all(ev.normalise(g) in text for g in c["gold"]), c["id"]
    sample = ev.cmrc_sample(paragraphs, ev.SAMPLE, ev.SEED)
    assert len(sample) == ev.SAMPLE and all(i.question and i.gold for i in sample)
    # Seeded: the same sample on every run and every machine.
    assert [i.id for i in ev.cmrc_sample(paragraphs, ev.SAMPLE, ev.SEED)] == [i.id for i in sample]


def test_gold_matching_ignores_case_whitespace_and_full_width_forms() -> None:
    assert ev.contains_gold("The gateway listens on port ８０００ [1].", ["8000"])
    assert ev.contains_gold("Run `Make  Test`.", ["make test"])
    assert ev.contains_gold("生命数耗完即算为 踢爆。", ["踢爆"])
    assert ev.contains_gold("ＤＱ", ["DQ"])
    assert not ev.contains_gold("It listens on port 8001.", ["8000"])
    assert not ev.contains_gold("anything", [""])
