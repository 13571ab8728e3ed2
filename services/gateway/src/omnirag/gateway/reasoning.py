"""A reasoning model's thinking, kept apart from its answer.

A reasoning model's answer reaches the gateway in one of three shapes:

- vLLM with ``--reasoning-parser`` puts the thinking in a field of its own beside ``content``, on
  the message and on every stream delta. vLLM before 0.11 (and DeepSeek's API, and several other
  OpenAI-compatible servers) call it ``reasoning_content``; vLLM 0.11 renamed it ``reasoning``,
  kept the old name for a while, then dropped it (v0.33, the chart's, writes ``reasoning`` only).
  Both are read; clients always get ``reasoning_content``.
- Without a parser the thinking is inline in ``content``: ``<think>…</think>`` and then the answer.
- DeepSeek-R1-0528's chat template ends the prompt with ``<think>``, so the output has only the
  closing ``</think>``: everything before it is thinking.

:class:`ReasoningSplitter` turns content deltas of any size (a tag may be cut at any character)
into thinking and answer, in order. The same splitter reads a whole message (:func:`split_message`),
so a streamed and a non-streamed answer are split alike. A model without the ``reasoning``
capability is split only when its output opens with ``<think>``: a closing tag alone means
nothing there, and waiting for one would hold back its whole answer. A reasoning model's output
that opens with neither a tag nor the reasoning field is held until ``</think>`` shows or the
output ends; with no tag at all it is all answer (thinking turned off, or a template without
thinking). What is held is bounded (:data:`HOLD_LIMIT`); past it the held text is taken for
thinking, as vLLM's deepseek_r1 parser takes all of an output without ``</think>``.

Thinking is never stored in the session history, never sent back to a model and never searched:
:func:`answer_only` and :func:`strip_history` remove it from earlier turns a client sends back.

:class:`ReasoningChatOpenAI` is LangChain's ``ChatOpenAI`` keeping the reasoning field, which
``ChatOpenAI`` drops (it reads OpenAI's own fields only), in ``additional_kwargs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

OPEN = "<think>"
CLOSE = "</think>"
# The field names servers use for the thinking, in the order they are read.
FIELDS = ("reasoning_content", "reasoning")
# Characters of a reasoning model's output held while it is not yet known to be thinking or answer
# (no opening tag, no reasoning field, no "</think>" yet). Its answers are capped at max_tokens
# (~4 characters a token), so an answer without thinking fits; thinking longer than this is
# passed on as thinking from here on instead of being held.
HOLD_LIMIT = 64 * 1024
# Whitespace held at the end of the thinking (it may be the run before "</think>") at most.
_SPACE_LIMIT = 1024


@dataclass(frozen=True)
class Piece:
    """What one delta (or a flush) yields: thinking first, then answer; either may be empty."""

    reasoning: str = ""
    answer: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.answer)


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (a tag cut by a delta boundary)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Splits one answer's content deltas into thinking and answer; see the module's docstring.

    ``feed_reasoning`` takes the reasoning field's deltas, ``feed`` the content's, ``finish`` the
    end of the output. Memory: the text held back is at most a cut tag and the whitespace before
    it, except while a reasoning model's output is undecided (at most :data:`HOLD_LIMIT`)."""

    def __init__(self, *, reasoning_model: bool, hold_limit: int = HOLD_LIMIT) -> None:
        self.reasoning_model = reasoning_model
        self.hold_limit = hold_limit
        self.field_seen = False
        # start: nothing but whitespace yet; think: inside the thinking; hold: undecided (a
        # reasoning model without an opening tag); after: just past "</think>"; answer: the rest.
        self.state = "start"
        self.pending = ""
        self.reasoning_chars = 0
        self.answer_chars = 0
        self.reasoning_started = False
        self._searched = 0

    # ---------- input ----------

    def feed_reasoning(self, text: str) -> Piece:
        """A delta of the server's own reasoning field: thinking as it is."""
        if not text:
            return Piece()
        self.field_seen = True
        self.reasoning_chars += len(text)
        return Piece(reasoning=text)

    def feed(self, text: str) -> Piece:
        """A content delta."""
        if not text:
            return Piece()
        if self.state == "answer":  # the common case, kept cheap
            self.answer_chars += len(text)
            return Piece(answer=text)
        self.pending += text
        return self._run(final=False)

    def finish(self) -> Piece:
        """The end of the output: whatever was held goes out."""
        return self._run(final=True)

    # ---------- the machine ----------

    def _out(self, reasoning: str = "", answer: str = "") -> Piece:
        if reasoning and not self.reasoning_started:
            reasoning = reasoning.lstrip()
            self.reasoning_started = bool(reasoning)
        self.reasoning_chars += len(reasoning)
        self.answer_chars += len(answer)
        return Piece(reasoning, answer)

    def _run(self, *, final: bool) -> Piece:
        reasoning: list[str] = []
        answer: list[str] = []
        while True:
            text = self.pending
            if self.state == "start":
                head = text.lstrip()
                if head.startswith(OPEN):
                    self.state, self.pending = "think", head[len(OPEN) :]
                    continue
                if not final and (OPEN.startswith(head) and len(text) <= _SPACE_LIMIT):
                    break  # only whitespace, or a cut "<think>", so far
                if self.reasoning_model and not self.field_seen:
                    self.state = "hold"
                    continue
                self.state, self.pending = "answer", ""
                answer.append(text)
                break
            if self.state == "think":
                at = text.find(CLOSE)
                if at >= 0:
                    reasoning.append(text[:at].rstrip())
                    self.state, self.pending = "after", text[at + len(CLOSE) :]
                    continue
                if final:  # never closed: all of it was thinking
                    reasoning.append(text.rstrip())
                    self.pending = ""
                    break
                keep = _partial(text, CLOSE)
                body = text[: len(text) - keep]
                stripped = body.rstrip()
                if len(body) - len(stripped) > _SPACE_LIMIT:
                    stripped = body
                reasoning.append(stripped)
                self.pending = text[len(stripped) :]
                break
            if self.state == "hold":
                # Searched from where the last search stopped: held text is scanned once.
                at = text.find(CLOSE, max(0, self._searched - len(CLOSE) + 1))
                self._searched = len(text)
                if at >= 0:
                    reasoning.append(text[:at].rstrip())
                    self.state, self.pending = "after", text[at + len(CLOSE) :]
                    continue
                if final:  # no tag at all: thinking was off, it is all answer
                    self.state, self.pending = "answer", ""
                    answer.append(text)
                    break
                if len(text) > self.hold_limit:
                    self.state = "think"  # too long to be an answer without thinking
                    continue
                break
            if self.state == "after":
                rest = text.lstrip()
                if not rest and not final and len(text) <= _SPACE_LIMIT:
                    break  # the blank lines between "</think>" and the answer
                self.state, self.pending = "answer", ""
                answer.append(rest)
                break
            # answer
            self.pending = ""
            answer.append(text)
            break
        return self._out("".join(reasoning), "".join(answer))


def split_message(
    content: str | None, reasoning_field: str | None = None, *, reasoning_model: bool = False
) -> Piece:
    """A whole message's thinking and answer (the reasoning field's text, if any, first)."""
    splitter = ReasoningSplitter(reasoning_model=reasoning_model)
    field = splitter.feed_reasoning(reasoning_field) if reasoning_field else Piece()
    fed = splitter.feed(content or "")
    tail = splitter.finish()
    thinking = (field.reasoning + fed.reasoning + tail.reasoning).strip()
    return Piece(reasoning=thinking, answer=fed.answer + tail.answer)


def reasoning_field(obj: dict[str, Any]) -> str | None:
    """The reasoning field of a message or delta, under either name; None when there is none."""
    for name in FIELDS:
        value = obj.get(name)
        if isinstance(value, str):
            return value
    return None


def answer_only(text: str) -> str:
    """An earlier assistant turn without its thinking: what may be stored or sent to a model again.
    A closing tag alone counts here (the turn may come from a model whose template opens it)."""
    return split_message(text, reasoning_model=True).answer.strip()


def strip_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier turns as they may go back to a model: assistant turns without reasoning fields and
    without inline thinking. Other messages are returned as they are (the same objects)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") != "assistant":
            out.append(m)
            continue
        clean = {k: v for k, v in m.items() if k not in FIELDS}
        content = clean.get("content")
        if isinstance(content, str) and (OPEN in content or CLOSE in content):
            clean["content"] = answer_only(content)
        elif isinstance(content, list):
            clean["content"] = [
                p | {"text": answer_only(p["text"])}
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                else p
                for p in content
            ]
        out.append(clean)
    return out


class ReasoningChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that keeps the server's reasoning field (``reasoning_content`` or
    ``reasoning``) in the message's ``additional_kwargs["reasoning_content"]``, on whole answers and
    on stream chunks. ``ChatOpenAI`` reads OpenAI's own fields only and drops it."""

    def _convert_chunk_to_generation_chunk(
        self,
        chunk: dict[str, Any],
        default_chunk_class: type,
        base_generation_info: dict[str, Any] | None,
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(
            chunk, default_chunk_class, base_generation_info
        )
        choices = chunk.get("choices") or []
        if generation is not None and choices and isinstance(generation.message, AIMessageChunk):
            thinking = reasoning_field(choices[0].get("delta") or {})
            if thinking:
                generation.message.additional_kwargs["reasoning_content"] = thinking
        return generation

    def _create_chat_result(
        self, response: dict[str, Any] | openai.BaseModel, generation_info: dict[str, Any] | None = None
    ) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump()
        for generation, choice in zip(result.generations, raw.get("choices") or [], strict=False):
            thinking = reasoning_field((choice or {}).get("message") or {})
            if thinking and isinstance(generation.message, AIMessage):
                generation.message.additional_kwargs["reasoning_content"] = thinking
        return result


__all__ = [
    "CLOSE",
    "HOLD_LIMIT",
    "OPEN",
    "Piece",
    "ReasoningChatOpenAI",
    "ReasoningSplitter",
    "answer_only",
    "reasoning_field",
    "split_message",
    "strip_history",
]
