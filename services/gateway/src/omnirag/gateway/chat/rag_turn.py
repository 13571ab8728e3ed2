"""A RAG turn: prepare the question (images read by OCR for a text-only model), load the session
history, rewrite a follow-up into a standalone question, retrieve, then answer from numbered
sources — the model's answer, checked against them (``answer_mode`` generate or auto), or the
sources' best sentence (extract). Every failure that can still be reported with a status (bad
input, a forbidden collection, the LLM down) happens before the response starts: a stream is opened
only once the LLM has produced its first token."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import httpx
from langchain_core.messages import AIMessage, AIMessageChunk

from omnirag.core.errors import InvalidInput, NotFound, NotReady, OmniragError, UpstreamError
from omnirag.core.text import language
from omnirag.gateway import grounding
from omnirag.gateway.auth import ApiKey
from omnirag.gateway.chat.request import AnswerMode, ChatRequest
from omnirag.gateway.chat.sse import canned, chunk, envelope
from omnirag.gateway.chat.turn import Answer, Outcome, TurnSteps, estimate
from omnirag.gateway.extract import Quote, extract, no_passage, quoted_answer
from omnirag.gateway.llm import LLMError
from omnirag.gateway.messages import prepare
from omnirag.gateway.rag import (
    Source,
    answer_cap,
    answer_limits,
    answer_max_tokens,
    budgeted_messages,
    check_rewrite,
    cited,
    clean_rewrite,
    fallback_rewrite,
    history_messages,
    message_text,
    needs_rewrite,
    nothing_found,
    retrieve,
    rewrite_chain,
    rewrite_limits,
    to_langchain,
)
from omnirag.gateway.reasoning import Piece, ReasoningSplitter, split_message
from omnirag.gateway.registry import ModelSpec
from omnirag.gateway.repetition import LoopGuard

if TYPE_CHECKING:
    from omnirag.gateway.state import GatewayState

log = logging.getLogger("omnirag.gateway.chat")


class RagTurn:
    """RAG turns, one object per app."""

    def __init__(self, gw: GatewayState, steps: TurnSteps) -> None:
        self.gw = gw
        self.s = gw.settings
        self.m = gw.metrics
        self.steps = steps
        self.embedder = gw.embedder
        # The embedder's languages (its /v1/info), read on first need; None until it answered.
        self._languages: set[str] | None = None

    async def answer(self, key: ApiKey, req: ChatRequest, spec: ModelSpec) -> Answer:
        started = time.perf_counter()
        collection = req.collection or self.s.default_collection
        key.check_collection(collection)
        top_k = min(req.top_k or self.s.default_top_k, self.s.max_top_k)
        outcome = Outcome(session_id=req.session_id, collection=collection, model=spec.name)
        if req.messages[-1].get("role") != "user":
            raise InvalidInput("the last message must be the user's question", code="invalid_message")
        history = await self.steps.history(key, req, outcome)
        prepared = await prepare(req.messages[-1:], self.s, self.gw.ocr, model=spec)
        question_message = prepared.messages[-1]
        question = prepared.question
        if not question.strip():
            raise InvalidInput("the question is empty", code="empty_question")

        mode: AnswerMode = req.answer_mode or self.s.answer_mode
        query = await self._query(question, history, mode, outcome)
        sources = await self._sources(collection, query, top_k, req.filter, outcome)
        self.m.rag_prep_seconds.observe(time.perf_counter() - started)
        if sources is not None:
            self.m.retrieval_hits.observe(len(sources))
            outcome.citations = [s.citation() for s in sources]

        head = envelope(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), spec.name)
        outcome.answer_mode = mode
        outcome.fallback = False
        if sources == []:
            self.m.empty_contexts.inc()
            answer = nothing_found(collection, question)
            self._counted(outcome)
            await self.steps.remember(key, req, question, answer, outcome)
            if req.stream:
                return canned(head, answer, outcome.public())
            return completion(head, answer, "stop", outcome, 0, 0)
        # auto with a model that does not answer in the question's language (a small English model
        # asked in Chinese): its answer would fail the check, so the extract comes at once.
        unanswered = mode == "auto" and bool(sources) and not spec.answers_in(language(question))
        if mode == "extract" or unanswered:
            # No LLM call: the sources' best sentence, or, with the search down, a note saying so.
            quote = await self._extract(question, sources, outcome) if sources else None
            answer = (
                self._quoted(outcome, quote, question, fallback=unanswered, unanswered=unanswered)
                if quote
                else no_passage(question)
            )
            if unanswered:
                outcome.grounding_reason = (
                    f"{spec.name} does not answer {language(question)} questions (it answers in "
                    f"{', '.join(spec.languages or ())})"
                )
            self._counted(outcome)
            await self.steps.remember(key, req, question, answer, outcome)
            if req.stream:
                return canned(head, answer, outcome.public())
            return completion(head, answer, "stop", outcome, 0, 0)
        retrieved = sources  # as the retriever gave them (lines kept): what an extract quotes

        system_extra = "\n".join(
            message_text(m) for m in req.messages[:-1] if m.get("role") in ("system", "developer")
        )
        # The answer's cap fits the question; the sources fit what it and the rest of the prompt
        # leave of the model's window, in its own tokens (those left out are not cited either).
        prompt = await budgeted_messages(
            question_message,
            [m for m in history if m.get("role") in ("user", "assistant")],
            sources,
            turns=self.s.history_prompt_turns,
            max_chars=self.s.context_max_chars,
            system_extra=system_extra,
            counter=self.gw.counter_for(spec),
            spec=spec,
            default_window=self.s.context_tokens,
            answer_tokens=answer_max_tokens(
                spec,
                answer_cap(
                    spec,
                    question,
                    self.steps.max_tokens(req),
                    self.s.answer_tokens,
                    self.s.answer_open_factor,
                ),
            ),
        )
        messages, sources = prompt.messages, prompt.sources
        outcome.citations = outcome.citations[: len(sources)] if sources is not None else outcome.citations
        llm = self.gw.chat_model_for(spec).bind(
            **answer_limits(spec, prompt.answer_tokens),
            temperature=self.s.llm_temperature if req.temperature is None else req.temperature,
        )
        lc_messages = to_langchain(messages)
        if not req.stream:
            try:
                result = await llm.ainvoke(lc_messages)
            except Exception as exc:
                self.m.llm_errors.labels("before_stream").inc()
                raise LLMError(f"the LLM failed: {type(exc).__name__}: {exc}") from exc
            self.m.ttft.labels("rag").observe(time.perf_counter() - started)
            piece = split_message(
                result.content if isinstance(result.content, str) else "",
                result.additional_kwargs.get("reasoning_content"),
                reasoning_model=spec.reasoning,
            )
            usage = getattr(result, "usage_metadata", None) or {}
            finish = (result.response_metadata or {}).get("finish_reason") or "stop"
            # The upstream's output count has the thinking in it; without one, both are estimated.
            completion_tokens = int(usage.get("output_tokens") or estimate(piece))
            await self.steps.count(key, int(usage.get("input_tokens", 0)), completion_tokens)
            outcome.cited = cited(piece.answer, len(outcome.citations))
            answer = await self._settle(outcome, mode, question, piece.answer, sources, retrieved)
            if outcome.answered_by == "model":
                answer = self.steps.all_thinking(outcome, question, piece.answer, bool(piece.reasoning))
            self._counted(outcome)
            # What the client is shown is what the session keeps (an extract in place of a bad answer).
            await self.steps.remember(key, req, question, answer, outcome)
            return completion(
                head,
                answer,
                finish,
                outcome,
                int(usage.get("input_tokens", 0)),
                completion_tokens,
                reasoning=piece.reasoning,
            )

        stream = llm.astream(lc_messages).__aiter__()
        try:
            first = await stream.__anext__()  # opens the connection: failures here still get a status
        except StopAsyncIteration:
            first = AIMessageChunk(content="")
        except Exception as exc:
            self.m.llm_errors.labels("before_stream").inc()
            raise LLMError(f"the LLM failed: {type(exc).__name__}: {exc}") from exc
        self.m.ttft.labels("rag").observe(time.perf_counter() - started)
        return self._stream(
            key,
            req,
            head,
            first,
            stream,
            outcome,
            question,
            spec,
            sources=sources,
            retrieved=retrieved,
            mode=mode,
        )

    async def _query(
        self, question: str, history: list[dict[str, Any]], mode: AnswerMode, outcome: Outcome
    ) -> str:
        """What is searched: the question, or a follow-up's standalone rewrite."""
        query = question
        if needs_rewrite(question, history) and mode == "extract":
            # extract calls no LLM at all, the rewrite's neither: the deterministic rewrite is searched.
            query = fallback_rewrite(question, history)
            outcome.rewrite = "fallback"
            outcome.rewritten_query = query
            self.m.rewrites_checked.labels("fallback").inc()
        elif needs_rewrite(question, history):
            # The rewrite's own model (GATEWAY_REWRITE_MODEL): often a small, fast one, whichever answers.
            rewriter = self.gw.registry.rewrite
            # A reasoning rewriter thinks first: off where it can be, else with room for it.
            llm = self.gw.chat_model_for(rewriter).bind(
                **rewrite_limits(rewriter, self.s.rewrite_max_tokens), temperature=0
            )
            try:
                raw = await rewrite_chain(llm).ainvoke(
                    {"history": history_messages(history, self.s.history_prompt_turns), "question": question}
                )
            except Exception as exc:
                raise LLMError(
                    f"the LLM failed while rewriting the question: {type(exc).__name__}: {exc}"
                ) from exc
            query = clean_rewrite(raw, question)
            self.m.rewrites.labels("changed" if query != question else "same").inc()
            # A rewrite that lost the follow-up's words, names nothing it refers to, or answers
            # instead of asking is not searched: the earlier question's terms joined to it are.
            failed = check_rewrite(query, question, history)
            outcome.rewrite = "fallback" if failed else "model"
            self.m.rewrites_checked.labels(outcome.rewrite).inc()
            if failed:
                log.info("the model's rewrite failed its check", extra={"reason": failed})
                query = fallback_rewrite(question, history)
            outcome.rewritten_query = query
        else:
            self.m.rewrites.labels("skipped").inc()
        return query

    async def _sources(
        self, collection: str, query: str, top_k: int, filter: dict[str, Any] | None, outcome: Outcome
    ) -> list[Source] | None:
        """The collection's best chunks for ``query``; None when the retriever is down (and the
        gateway answers without it)."""
        sources: list[Source] | None
        try:
            sources = await retrieve(
                base_url=self.s.retriever_url,
                client=self.gw.http,
                collection=collection,
                query=query,
                k=top_k,
                filter=filter,
                threshold=self.s.relevance_threshold,
                timeout=self.s.upstream_timeout,
            )
        except NotFound:
            raise NotFound(f"no collection {collection!r}", code="collection_not_found") from None
        except UpstreamError as exc:
            if exc.details and exc.details.get("status") == 422:
                raise InvalidInput(
                    f"retrieval refused the request: {exc.message}", code="invalid_filter"
                ) from None
            self._retrieval_down(outcome, exc)
            sources = None
        except (httpx.HTTPError, OSError) as exc:
            self._retrieval_down(outcome, exc)
            sources = None
        return sources

    def _retrieval_down(self, outcome: Outcome, exc: BaseException) -> None:
        if self.s.retrieval_fail_closed:
            raise NotReady("the retriever is unavailable", code="retriever_unavailable") from exc
        self.steps.degrade(outcome, "retriever", exc)
        return None

    async def _stream(
        self,
        key: ApiKey,
        req: ChatRequest,
        head: dict[str, Any],
        first: AIMessage,
        rest: AsyncIterator[AIMessage],
        outcome: Outcome,
        question: str,
        spec: ModelSpec,
        *,
        sources: list[Source] | None = None,
        retrieved: list[Source] | None = None,
        mode: str = "generate",
    ) -> AsyncGenerator[bytes, None]:
        parts: list[str] = []  # the answer's deltas: what the session keeps
        generated = 0  # deltas of thinking or answer, about a token each: the count without usage
        usage: dict[str, Any] = {}
        finish: Literal["stop", "length"] | str = "stop"
        splitter = ReasoningSplitter(reasoning_model=spec.reasoning)
        # auto holds the answer back until it is checked (the client gets keep-alive comments, and
        # the thinking, which is never the answer, live): it sees one answer, never two spliced.
        held = mode == "auto" and bool(sources)
        guard = LoopGuard()
        looped = False
        yield chunk(head, {"role": "assistant", "content": ""})

        def send(piece: Piece) -> list[bytes]:
            # Thinking and answer in chunks of their own, thinking first.
            nonlocal looped
            out = []
            if piece.reasoning:
                out.append(chunk(head, {"reasoning_content": piece.reasoning}))
            if piece.answer and not looped:
                looped = guard.feed(piece.answer)
                parts.append(piece.answer)
                if not held:
                    out.append(chunk(head, {"content": piece.answer}))
            return out

        def take(message: AIMessage) -> list[bytes]:
            nonlocal usage, finish, generated
            if message.usage_metadata:
                usage = dict(message.usage_metadata)
            reason = (message.response_metadata or {}).get("finish_reason")
            if reason:
                finish = reason
            thinking = message.additional_kwargs.get("reasoning_content")
            text = message.content if isinstance(message.content, str) else ""
            generated += bool(thinking) + bool(text)
            thought = splitter.feed_reasoning(thinking) if isinstance(thinking, str) else Piece()
            return send(thought) + send(splitter.feed(text))

        try:
            for out in take(first):
                yield out
            if not looped:
                async for piece in rest:
                    for out in take(piece):
                        yield out
                    if looped:
                        break
            if looped:
                # The answer loops: stop reading the LLM (closing the stream hangs up on it) and
                # end the answer here, as if it had stopped.
                self.m.llm_loops.inc()
                finish = "stop"
                aclose = getattr(rest, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            else:
                for out in send(splitter.finish()):
                    yield out
        except Exception as exc:
            for event in self.steps.broken(exc):
                yield event
            return
        answer = "".join(parts)
        if looped and held and guard.keep is not None:
            answer = answer[: guard.keep]  # nothing was shown yet: keep the loop's block once
        outcome.cited = cited(answer, len(outcome.citations))
        shown = await self._settle(outcome, mode, question, answer, sources, retrieved)
        if outcome.answered_by == "model":
            shown = self.steps.all_thinking(outcome, question, answer, splitter.reasoning_chars > 0)
        if (held or shown != answer) and shown:
            yield chunk(head, {"content": shown})
        self._counted(outcome)
        async for event in self.steps.ended(
            key,
            req,
            question,
            shown,
            outcome,
            head,
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens") or generated),
            last=[chunk(head, {}, finish)],
        ):
            yield event

    # ---------- answer quality: the grounding check and the extractive answer ----------

    async def _embedder_covers(self, question: str) -> bool:
        """Whether the embedder's model covers the question's language (its /v1/info ``languages``;
        a model card that names none counts as English only). Read once; not cached while the
        embedder is down, and a down embedder covers nothing: extraction goes on without it."""
        languages = self._languages
        if languages is None:
            try:
                info = await self.embedder.info()
            except OmniragError as exc:
                log.info(
                    "no embedder info; extracting without it", extra={"error": f"{type(exc).__name__}: {exc}"}
                )
                return False
            languages = self._languages = {x.lower() for x in info.languages or ["en"]}
        return language(question) in languages

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts`` from the embedder."""
        out = await self.embedder.embeddings(texts)
        return [d.embedding for d in out.data if not isinstance(d.embedding, str)]

    async def _extract(self, question: str, sources: list[Source], outcome: Outcome) -> Quote | None:
        embed = self._embed if await self._embedder_covers(question) else None
        quote = await extract(question, sources, embed)
        if quote is not None and quote.embedder_error is not None:
            self.steps.degrade(outcome, "embedder", quote.embedder_error)
        return quote

    def _quoted(
        self, outcome: Outcome, quote: Quote, question: str, *, fallback: bool, unanswered: bool = False
    ) -> str:
        outcome.answered_by = "extract"
        outcome.quote = {"citation": quote.citation, "text": quote.text}
        outcome.cited = [quote.citation]
        outcome.fallback = fallback
        return quoted_answer(quote, question, fallback=fallback, unanswered=unanswered)

    async def _settle(
        self,
        outcome: Outcome,
        mode: str,
        question: str,
        answer: str,
        sources: list[Source] | None,
        retrieved: list[Source] | None = None,
    ) -> str:
        """Check the model's ``answer`` (``outcome.cited`` already set) against the ``sources`` its
        prompt gave it and report the verdict; in auto mode an answer that fails is replaced by the
        extractive one, quoted from the same sources as ``retrieved`` (their text as the retriever
        gave it, lines and headings kept). Returns the text to show. Without sources (retrieval
        down) there is nothing to check against: grounded stays None."""
        outcome.answered_by = "model"
        outcome.fallback = False
        if not sources:
            return answer
        verdict = grounding.check(answer, question, sources, outcome.cited)
        outcome.grounded, outcome.grounding_reason = verdict.grounded, verdict.reason
        if verdict.grounded or mode != "auto":
            return answer
        given = {s.number for s in sources}
        quote = await self._extract(question, [s for s in retrieved or sources if s.number in given], outcome)
        if quote is None:
            return answer
        return self._quoted(outcome, quote, question, fallback=True)

    def _counted(self, outcome: Outcome) -> None:
        grounded = "unchecked" if outcome.grounded is None else str(outcome.grounded).lower()
        self.m.answers.labels(outcome.answer_mode or "", outcome.answered_by or "none", grounded).inc()


def completion(
    head: dict[str, Any],
    answer: str,
    finish: str,
    outcome: Outcome,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    reasoning: str = "",
) -> dict[str, Any]:
    """The answer as one ``chat.completion``."""
    message = {"role": "assistant", "content": answer}
    if reasoning:
        message["reasoning_content"] = reasoning
    return head | {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "omnirag": outcome.public(),
    }
