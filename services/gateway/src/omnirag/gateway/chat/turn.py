"""What both kinds of chat turn share: the ``omnirag`` outcome, the session's history, the token
count, the answer that was all thinking, and how a streamed answer ends — on the ``omnirag`` tail
and ``[DONE]``, or, when the LLM's stream breaks midway, on an error event and ``[DONE]`` (no retry,
so no text is ever sent twice)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from omnirag.gateway.auth import ApiKey
from omnirag.gateway.chat.request import ChatRequest
from omnirag.gateway.chat.sse import DONE, error_event, tail
from omnirag.gateway.rag import empty_answer, stored_answer
from omnirag.gateway.reasoning import Piece, strip_history

if TYPE_CHECKING:
    from omnirag.gateway.state import GatewayState

log = logging.getLogger("omnirag.gateway.chat")

# A turn's answer: the completion's JSON, or the events of its stream.
Answer = dict[str, Any] | AsyncGenerator[bytes, None]


@dataclass
class Outcome:
    """What the ``omnirag`` object reports, and what is kept for history and limits."""

    citations: list[dict[str, Any]] = field(default_factory=list)
    # The numbers of the citations the answer itself cites (never its thinking), in order.
    cited: list[int] = field(default_factory=list)
    rewritten_query: str | None = None
    session_id: str | None = None
    degraded: list[str] = field(default_factory=list)
    collection: str | None = None
    # The registry entry's name: what every response and chunk says answered (not in ``omnirag``).
    model: str = ""
    # The answer's provenance and check (RAG answers; a pass-through leaves them None).
    answer_mode: str | None = None
    answered_by: Literal["model", "extract"] | None = None  # None: the gateway's own note
    grounded: bool | None = None  # None: not checked (extract mode, nothing retrieved, no sources)
    grounding_reason: str | None = None
    fallback: bool | None = None
    quote: dict[str, Any] | None = None
    rewrite: Literal["model", "fallback"] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "citations": self.citations,
            "cited": self.cited,
            "rewritten_query": self.rewritten_query,
            "session_id": self.session_id,
            "degraded": self.degraded,
            "collection": self.collection,
            "answer_mode": self.answer_mode,
            "answered_by": self.answered_by,
            "grounded": self.grounded,
            "grounding_reason": self.grounding_reason,
            "fallback": self.fallback,
            "quote": self.quote,
            "rewrite": self.rewrite,
        }


def estimate(piece: Piece) -> int:
    """Tokens of a message when the upstream reports none: about 4 characters each, thinking included."""
    return (len(piece.reasoning) + len(piece.answer) + 3) // 4


class TurnSteps:
    """The steps both kinds of turn take, on the gateway's parts."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self.s = gw.settings
        self.m = gw.metrics

    def max_tokens(self, req: ChatRequest) -> int:
        asked = req.max_completion_tokens or req.max_tokens or self.s.max_tokens_cap
        return min(asked, self.s.max_tokens_cap)

    async def history(self, key: ApiKey, req: ChatRequest, outcome: Outcome) -> list[dict[str, Any]]:
        """Earlier turns: the client's own when it sends the conversation, else the session's."""
        # A client that sends its conversation back may send the thinking with it: never to a model.
        earlier = strip_history(req.messages[:-1])
        if req.session_id is None:
            return earlier
        if any(m.get("role") == "assistant" for m in earlier):
            return earlier  # stateless client: it sent the whole conversation
        try:
            stored = await self.gw.history.load(key.principal, req.session_id)
        except Exception as exc:
            self.degrade(outcome, "history", exc)
            stored = []
        return stored + earlier

    def degrade(self, outcome: Outcome, part: str, exc: BaseException) -> None:
        if part not in outcome.degraded:
            outcome.degraded.append(part)
            self.m.degraded.labels(part).inc()
        log.warning("%s is down; answering without it", part, extra={"error": f"{type(exc).__name__}: {exc}"})

    async def remember(
        self, key: ApiKey, req: ChatRequest, question: str, answer: str, outcome: Outcome
    ) -> None:
        if req.session_id is None or "history" in outcome.degraded or "answer" in outcome.degraded:
            return  # no history to add to, or no answer worth keeping (all thinking)
        if outcome.collection is not None:  # a RAG answer: plain text only (see stored_answer)
            answer = stored_answer(answer, len(outcome.citations))
        turn = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        try:
            await self.gw.history.append(key.principal, req.session_id, turn)
        except Exception as exc:
            log.warning("could not store the turn", extra={"error": f"{type(exc).__name__}: {exc}"})

    def all_thinking(self, outcome: Outcome, question: str, answer: str, thought: bool) -> str:
        """The answer to show: the model's, or, when its thinking used every token and no answer
        came, a note that says so (never the thinking itself), reported as ``degraded: answer``."""
        if answer.strip() or not thought:
            return answer
        if "answer" not in outcome.degraded:
            outcome.degraded.append("answer")
            self.m.degraded.labels("answer").inc()
        return empty_answer(question)

    async def count(self, key: ApiKey, prompt_tokens: int, completion_tokens: int) -> None:
        self.m.llm_tokens.labels("prompt").inc(prompt_tokens)
        self.m.llm_tokens.labels("completion").inc(completion_tokens)
        try:
            await self.gw.limiter.add_tokens(key, prompt_tokens + completion_tokens)
        except Exception as exc:
            log.warning("could not count tokens", extra={"error": f"{type(exc).__name__}: {exc}"})

    # ---------- how a stream ends ----------

    def broken(self, exc: Exception) -> Iterator[bytes]:
        """The end of a stream whose LLM stream broke midway: the answer so far stands, the error
        event says why it stops there."""
        self.m.llm_errors.labels("mid_stream").inc()
        log.warning("the LLM stream broke", extra={"error": f"{type(exc).__name__}: {exc}"})
        yield error_event("llm_error", f"the LLM stream broke: {type(exc).__name__}")
        yield DONE

    async def ended(
        self,
        key: ApiKey,
        req: ChatRequest,
        question: str,
        answer: str,
        outcome: Outcome,
        head: dict[str, Any],
        *,
        prompt_tokens: int,
        completion_tokens: int,
        last: Iterable[bytes] = (),
    ) -> AsyncIterator[bytes]:
        """The end of a stream whose LLM stream ended: the tokens counted and the turn stored, then
        ``last`` (the closing chunk), the ``omnirag`` tail and ``[DONE]``. Stored before the stream
        ends: a client that reads the session, or asks its follow-up, the moment it sees [DONE]
        finds this turn there."""
        await self.count(key, prompt_tokens, completion_tokens)
        await self.remember(key, req, question, answer, outcome)
        for event in last:
            yield event
        yield tail(head, outcome.public())
        yield DONE
