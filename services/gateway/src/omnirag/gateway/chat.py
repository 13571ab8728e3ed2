"""``POST /v1/chat/completions`` behind the route: RAG answers and pass-through, streamed or not.

RAG: prepare the input (images read by OCR for a text-only model), load the session history,
rewrite a follow-up into a standalone question, retrieve, then answer from numbered sources. Every
failure that can still be reported with a status (bad input, a forbidden collection, the LLM down)
happens before the response starts: a stream is opened only once the LLM has produced its first
token. After that, an upstream failure ends the stream with an error event and ``[DONE]`` — no
retry, so no text is ever sent twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson
from langchain_core.messages import AIMessage, AIMessageChunk
from pydantic import BaseModel, ConfigDict, Field

from omnirag.core.errors import BadRequest, InvalidInput, NotFound, NotReady, OmniragError, UpstreamError
from omnirag.core.names import CollectionName
from omnirag.core.text import language
from omnirag.gateway import grounding
from omnirag.gateway.auth import ApiKey
from omnirag.gateway.extract import Quote, extract, no_passage, quoted_answer
from omnirag.gateway.llm import LLMError
from omnirag.gateway.memory import check_session_id
from omnirag.gateway.messages import content_parts, prepare
from omnirag.gateway.rag import (
    Source,
    answer_cap,
    answer_limits,
    answer_max_tokens,
    budgeted_messages,
    check_rewrite,
    cited,
    clean_rewrite,
    empty_answer,
    fallback_rewrite,
    history_messages,
    message_text,
    needs_rewrite,
    nothing_found,
    retrieve,
    rewrite_chain,
    rewrite_limits,
    stored_answer,
    to_langchain,
)
from omnirag.gateway.reasoning import (
    FIELDS,
    Piece,
    ReasoningSplitter,
    reasoning_field,
    split_message,
    strip_history,
)
from omnirag.gateway.registry import ModelSpec
from omnirag.gateway.repetition import LoopGuard

if TYPE_CHECKING:
    from omnirag.gateway.state import GatewayState

log = logging.getLogger("omnirag.gateway.chat")

OMNIRAG_FIELDS = ("collection", "session_id", "top_k", "filter", "rag", "answer_mode")
AnswerMode = Literal["generate", "extract", "auto"]
ROLES = {"system", "developer", "user", "assistant", "tool"}


class ChatRequest(BaseModel):
    """The OpenAI chat request plus omnirag's options. Unknown OpenAI fields are kept and passed on."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    # omnirag (extra_body in the OpenAI SDK)
    collection: CollectionName | None = None
    session_id: str | None = None
    top_k: int | None = Field(None, ge=1)
    filter: dict[str, Any] | None = None
    rag: bool | None = Field(
        None,
        description="Answer from the collection (default) or pass through to the LLM. "
        "Requests with tools pass through.",
    )
    answer_mode: AnswerMode | None = Field(
        None,
        description="How a RAG answer is made: generate (the model, checked), extract (the sources' best "
        "sentence, no LLM call) or auto (the model, replaced by the extract when it fails the check). "
        "Default: the gateway's answer_mode setting.",
    )


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


def _normalise_tool_deltas(delta: dict[str, Any], announced: set[int]) -> None:
    """Make streamed tool calls look like OpenAI's: ``id``, ``type`` and the function's ``name``
    only in the first delta of each call, then only ``arguments``. llama.cpp repeats them in every
    delta, which the openai SDK's and LangChain's accumulators concatenate into "namename…"."""
    delta.pop("function_call", None)
    for call in delta.get("tool_calls") or []:
        index = call.get("index", 0)
        if index in announced:
            call.pop("id", None)
            call.pop("type", None)
            if isinstance(call.get("function"), dict):
                call["function"].pop("name", None)
        else:
            announced.add(index)


def _split_message(message: dict[str, Any], spec: ModelSpec) -> Piece:
    """Put a whole message's thinking under ``reasoning_content`` and leave the answer in
    ``content`` (in place); return both."""
    thinking = reasoning_field(message)
    for name in FIELDS:
        message.pop(name, None)
    content = message.get("content")
    piece = split_message(
        content if isinstance(content, str) else None, thinking, reasoning_model=spec.reasoning
    )
    if isinstance(content, str):
        message["content"] = piece.answer
    if piece.reasoning:
        message["reasoning_content"] = piece.reasoning
    return piece


def _estimate(piece: Piece) -> int:
    """Tokens of a message when the upstream reports none: about 4 characters each, thinking included."""
    return (len(piece.reasoning) + len(piece.answer) + 3) // 4


def _empty(chunk: dict[str, Any]) -> bool:
    """A chunk that carries nothing once held-back text is taken out of it."""
    if chunk.get("usage") or not chunk.get("choices"):
        return False
    return all(
        c.get("finish_reason") is None and not any(v for v in (c.get("delta") or {}).values())
        for c in chunk["choices"]
    )


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
# An SSE comment: it keeps a quiet stream's connection busy for the proxies on the way (idle
# timeouts of 30-60 s) and every SSE client, the OpenAI SDK's included, skips it.
KEEPALIVE = b": keep-alive\n\n"


def error_event(code: str, message: str) -> bytes:
    """The event a stream that can no longer answer with a status ends on (before ``[DONE]``)."""
    return _sse({"error": {"code": code, "message": message}})


class ChatHandler:
    """One per app (``GatewayState.chat``)."""

    def __init__(self, gw: GatewayState) -> None:
        self.gw = gw
        self.s = gw.settings
        self.m = gw.metrics
        self.embedder = gw.embedder
        # The embedder's languages (its /v1/info), read on first need; None until it answered.
        self._languages: set[str] | None = None

    # ---------- shared steps ----------

    def _validate(self, req: ChatRequest) -> None:
        if len(req.messages) > self.s.max_messages:
            raise InvalidInput(
                f"{len(req.messages)} messages; the limit is {self.s.max_messages}", code="too_many_messages"
            )
        for i, m in enumerate(req.messages):
            if m.get("role") not in ROLES:
                raise InvalidInput(
                    f"messages[{i}].role must be one of {sorted(ROLES)}", code="invalid_message"
                )

    def _max_tokens(self, req: ChatRequest) -> int:
        asked = req.max_completion_tokens or req.max_tokens or self.s.max_tokens_cap
        return min(asked, self.s.max_tokens_cap)

    async def _history(self, key: ApiKey, req: ChatRequest, outcome: Outcome) -> list[dict[str, Any]]:
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
            self._degrade(outcome, "history", exc)
            stored = []
        return stored + earlier

    def _degrade(self, outcome: Outcome, part: str, exc: BaseException) -> None:
        if part not in outcome.degraded:
            outcome.degraded.append(part)
            self.m.degraded.labels(part).inc()
        log.warning("%s is down; answering without it", part, extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _remember(
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

    def _all_thinking(self, outcome: Outcome, question: str, answer: str, thought: bool) -> str:
        """The answer to show: the model's, or, when its thinking used every token and no answer
        came, a note that says so (never the thinking itself), reported as ``degraded: answer``."""
        if answer.strip() or not thought:
            return answer
        if "answer" not in outcome.degraded:
            outcome.degraded.append("answer")
            self.m.degraded.labels("answer").inc()
        return empty_answer(question)

    async def _count(self, key: ApiKey, prompt_tokens: int, completion_tokens: int) -> None:
        self.m.llm_tokens.labels("prompt").inc(prompt_tokens)
        self.m.llm_tokens.labels("completion").inc(completion_tokens)
        try:
            await self.gw.limiter.add_tokens(key, prompt_tokens + completion_tokens)
        except Exception as exc:
            log.warning("could not count tokens", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _envelope(self, cid: str, created: int, model: str) -> dict[str, Any]:
        return {"id": cid, "created": created, "model": model}

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
            self._degrade(outcome, "embedder", quote.embedder_error)
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

    # ---------- entry ----------

    async def handle(self, key: ApiKey, req: ChatRequest) -> dict[str, Any] | AsyncGenerator[bytes, None]:
        self._validate(req)
        if req.session_id is not None:
            check_session_id(req.session_id)
        rag = req.rag if req.rag is not None else not req.tools
        # What goes to the model: RAG sends the last message (earlier turns as text), pass-through all.
        parts = content_parts(req.messages[-1:] if rag else req.messages)
        spec = self.gw.registry.choose(req.model, parts, key)
        if req.tools and not spec.takes("tools"):
            raise BadRequest(f"the model {spec.name!r} cannot take tools", code="tools_unsupported")
        if rag and req.tools:
            raise BadRequest(
                "tools are passed through only with rag off ('rag': false)", code="tools_need_rag_off"
            )
        if rag:
            return await self._rag(key, req, spec)
        return await self._pass_through(key, req, spec)

    # ---------- pass-through ----------

    async def _pass_through(
        self, key: ApiKey, req: ChatRequest, spec: ModelSpec
    ) -> dict[str, Any] | AsyncGenerator[bytes, None]:
        started = time.perf_counter()
        outcome = Outcome(session_id=req.session_id, model=spec.name)
        history = await self._history(key, req, outcome)
        prepared = await prepare(history + req.messages[-1:], self.s, self.gw.ocr, model=spec)
        body = req.model_dump(exclude_none=True, exclude=set(OMNIRAG_FIELDS) | {"max_completion_tokens"})
        # Some servers (llama.cpp) refuse an assistant turn whose content is null beside tool_calls,
        # which is what OpenAI clients send back; an empty string means the same.
        body["messages"] = [
            m | {"content": ""} if m.get("role") == "assistant" and m.get("content") is None else m
            for m in prepared.messages
        ]
        body["model"] = spec.served
        body["max_tokens"] = answer_max_tokens(spec, self._max_tokens(req))
        prompt_estimate = sum(len(message_text(m)) for m in prepared.messages) // 4
        if not req.stream:
            result = await self.gw.passthrough_for(spec).complete(body)
            self.m.ttft.labels("passthrough").observe(time.perf_counter() - started)
            choices = result.get("choices") or [{}]
            pieces = [_split_message(c.get("message") or {}, spec) for c in choices if isinstance(c, dict)]
            message = choices[0].get("message") or {}
            if message.get("tool_calls"):
                message.pop("function_call", None)  # the legacy field, beside tool_calls
                answer = pieces[0].answer if pieces else ""
            elif pieces:
                answer = self._all_thinking(
                    outcome, prepared.question, pieces[0].answer, bool(pieces[0].reasoning)
                )
                if answer != pieces[0].answer:
                    message["content"] = answer
            else:
                answer = ""
            usage = result.get("usage") or {}
            await self._count(
                key,
                int(usage.get("prompt_tokens") or prompt_estimate),
                # The upstream's count has the thinking in it (vLLM counts every generated token).
                int(usage.get("completion_tokens") or sum(_estimate(p) for p in pieces)),
            )
            await self._remember(key, req, prepared.question, answer, outcome)
            result["model"] = spec.name
            result["omnirag"] = outcome.public()
            return result
        # The upstream's own count (thinking included) is asked for even when the client did not
        # ask for usage; then it is kept for the key's token budget and not passed on.
        options = body.get("stream_options")
        client_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        body["stream_options"] = (options if isinstance(options, dict) else {}) | {"include_usage": True}
        payloads = await self.gw.passthrough_for(spec).stream(body)
        return self._relay(
            key, req, payloads, outcome, prepared.question, prompt_estimate, started, spec, client_usage
        )

    async def _relay(
        self,
        key: ApiKey,
        req: ChatRequest,
        payloads: AsyncGenerator[bytes, None],
        outcome: Outcome,
        question: str,
        prompt_estimate: int,
        started: float,
        spec: ModelSpec,
        client_usage: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        first = True
        envelope: dict[str, Any] = {}
        announced: set[int] = set()
        model = outcome.model
        # One splitter per choice; the first choice's answer is what the session keeps.
        splitters: dict[int, ReasoningSplitter] = {}
        finished: set[int] = set()  # choices whose finish_reason came (their splitters flushed)
        answer: list[str] = []
        called_tools = False
        generated = 0  # deltas of thinking or answer, about a token each: the count without usage
        usage: dict[str, Any] = {}

        def split(choice: dict[str, Any], flush: bool) -> tuple[bool, str]:
            """Rewrite one choice's delta: the thinking under ``reasoning_content`` only, the answer
            in ``content``. Returns (changed, thinking that must go out before this delta's answer)."""
            nonlocal generated, called_tools
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            index = choice.get("index", 0)
            splitter = splitters.get(index)
            if splitter is None:
                splitter = splitters[index] = ReasoningSplitter(reasoning_model=spec.reasoning)
            if "tool_calls" in delta and index == 0:
                called_tools = True
            text = delta.get("content")
            named = [name for name in FIELDS if name in delta]
            if not named and splitter.state == "answer" and not flush:
                if text and index == 0:  # the common case: the answer, untouched
                    answer.append(text)
                    generated += 1
                return False, ""
            thinking = reasoning_field(delta) or ""
            for name in named:
                del delta[name]
            piece = splitter.feed_reasoning(thinking) if thinking else Piece()
            fed = splitter.feed(text) if isinstance(text, str) else Piece()
            tail = Piece()
            if flush:
                tail = splitter.finish()
                finished.add(index)
            reasoning = piece.reasoning + fed.reasoning + tail.reasoning
            said = fed.answer + tail.answer
            generated += bool(thinking) + bool(text)
            if index == 0:
                answer.append(said)
                if flush and not called_tools:
                    whole = "".join(answer)
                    shown = self._all_thinking(outcome, question, whole, splitter.reasoning_chars > 0)
                    if shown != whole:
                        said += shown
            if said or "content" in delta:
                delta["content"] = said
            before = ""
            if reasoning and said:
                before = reasoning  # sent in a chunk of its own first: thinking precedes the answer
            elif reasoning:
                delta["reasoning_content"] = reasoning
            choice["delta"] = delta
            return True, before

        try:
            async with contextlib.aclosing(payloads):  # the client left: hang up on the LLM at once
                async for payload in payloads:
                    if first:
                        self.m.ttft.labels("passthrough").observe(time.perf_counter() - started)
                        first = False
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        continue
                    if not envelope:
                        envelope = {"id": chunk.get("id"), "created": chunk.get("created"), "model": model}
                    # Most chunks need no change: they go out as the upstream wrote them, unserialised.
                    changed = chunk.get("model") != model
                    if changed:
                        chunk["model"] = model
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                        if not client_usage:
                            if not chunk.get("choices"):
                                continue  # the usage-only chunk the client did not ask for
                            del chunk["usage"]
                            changed = True
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if "tool_calls" in delta or "function_call" in delta:
                            _normalise_tool_deltas(delta, announced)
                            changed = True
                        altered, before = split(choice, flush=choice.get("finish_reason") is not None)
                        changed = changed or altered
                        if before:
                            yield _sse(
                                chunk
                                | {
                                    "choices": [
                                        {
                                            "index": choice.get("index", 0),
                                            "delta": {"reasoning_content": before},
                                            "finish_reason": None,
                                        }
                                    ]
                                }
                            )
                    if changed and _empty(chunk):
                        continue  # all of it held back (a tag cut in two): nothing to send yet
                    yield _sse(chunk) if changed else b"data: " + payload + b"\n\n"
                # An upstream that ended without a finish_reason: what its splitters hold goes out.
                for index in sorted(set(splitters) - finished):
                    if splitters[index].state != "answer" or splitters[index].pending:
                        last: dict[str, Any] = {"index": index, "delta": {}, "finish_reason": None}
                        altered, before = split(last, flush=True)
                        if before:
                            last["delta"]["reasoning_content"] = before
                        if not _empty({"choices": [last]}):
                            yield _sse(envelope | {"object": "chat.completion.chunk", "choices": [last]})
        except Exception as exc:
            self.m.llm_errors.labels("mid_stream").inc()
            yield _sse(
                {"error": {"code": "llm_error", "message": f"the LLM stream broke: {type(exc).__name__}"}}
            )
            yield DONE
            return
        # Stored before the stream ends: a client that reads the session, or asks its follow-up,
        # the moment it sees [DONE] finds this turn there.
        await self._count(
            key,
            int(usage.get("prompt_tokens") or prompt_estimate),
            int(usage.get("completion_tokens") or generated),
        )
        await self._remember(key, req, question, "".join(answer), outcome)
        yield _sse(envelope | {"object": "chat.completion.chunk", "choices": [], "omnirag": outcome.public()})
        yield DONE

    # ---------- RAG ----------

    async def _rag(
        self, key: ApiKey, req: ChatRequest, spec: ModelSpec
    ) -> dict[str, Any] | AsyncGenerator[bytes, None]:
        started = time.perf_counter()
        collection = req.collection or self.s.default_collection
        key.check_collection(collection)
        top_k = min(req.top_k or self.s.default_top_k, self.s.max_top_k)
        outcome = Outcome(session_id=req.session_id, collection=collection, model=spec.name)
        if req.messages[-1].get("role") != "user":
            raise InvalidInput("the last message must be the user's question", code="invalid_message")
        history = await self._history(key, req, outcome)
        prepared = await prepare(req.messages[-1:], self.s, self.gw.ocr, model=spec)
        question_message = prepared.messages[-1]
        question = prepared.question
        if not question.strip():
            raise InvalidInput("the question is empty", code="empty_question")

        mode: AnswerMode = req.answer_mode or self.s.answer_mode
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

        sources: list[Any] | None
        try:
            sources = await retrieve(
                base_url=self.s.retriever_url,
                client=self.gw.http,
                collection=collection,
                query=query,
                k=top_k,
                filter=req.filter,
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
        self.m.rag_prep_seconds.observe(time.perf_counter() - started)
        if sources is not None:
            self.m.retrieval_hits.observe(len(sources))
            outcome.citations = [s.citation() for s in sources]

        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        outcome.answer_mode = mode
        outcome.fallback = False
        if sources == []:
            self.m.empty_contexts.inc()
            answer = nothing_found(collection, question)
            self._counted(outcome)
            await self._remember(key, req, question, answer, outcome)
            if req.stream:
                return self._canned_stream(cid, created, answer, outcome)
            return self._completion(cid, created, answer, "stop", outcome, 0, 0)
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
            await self._remember(key, req, question, answer, outcome)
            if req.stream:
                return self._canned_stream(cid, created, answer, outcome)
            return self._completion(cid, created, answer, "stop", outcome, 0, 0)
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
                    spec, question, self._max_tokens(req), self.s.answer_tokens, self.s.answer_open_factor
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
            completion_tokens = int(usage.get("output_tokens") or _estimate(piece))
            await self._count(key, int(usage.get("input_tokens", 0)), completion_tokens)
            outcome.cited = cited(piece.answer, len(outcome.citations))
            answer = await self._settle(outcome, mode, question, piece.answer, sources, retrieved)
            if outcome.answered_by == "model":
                answer = self._all_thinking(outcome, question, piece.answer, bool(piece.reasoning))
            self._counted(outcome)
            # What the client is shown is what the session keeps (an extract in place of a bad answer).
            await self._remember(key, req, question, answer, outcome)
            return self._completion(
                cid,
                created,
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
        return self._rag_stream(
            key,
            req,
            cid,
            created,
            first,
            stream,
            outcome,
            question,
            spec,
            sources=sources,
            retrieved=retrieved,
            mode=mode,
        )

    def _retrieval_down(self, outcome: Outcome, exc: BaseException) -> None:
        if self.s.retrieval_fail_closed:
            raise NotReady("the retriever is unavailable", code="retriever_unavailable") from exc
        self._degrade(outcome, "retriever", exc)
        return None

    def _completion(
        self,
        cid: str,
        created: int,
        answer: str,
        finish: str,
        outcome: Outcome,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        reasoning: str = "",
    ) -> dict[str, Any]:
        message = {"role": "assistant", "content": answer}
        if reasoning:
            message["reasoning_content"] = reasoning
        return self._envelope(cid, created, outcome.model) | {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "omnirag": outcome.public(),
        }

    def _chunk(
        self, cid: str, created: int, delta: dict[str, Any], finish: str | None = None, *, model: str
    ) -> bytes:
        return _sse(
            self._envelope(cid, created, model)
            | {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def _tail(self, cid: str, created: int, outcome: Outcome) -> bytes:
        return _sse(
            self._envelope(cid, created, outcome.model)
            | {"object": "chat.completion.chunk", "choices": [], "omnirag": outcome.public()}
        )

    async def _canned_stream(
        self, cid: str, created: int, answer: str, outcome: Outcome
    ) -> AsyncGenerator[bytes, None]:
        model = outcome.model
        yield self._chunk(cid, created, {"role": "assistant", "content": ""}, model=model)
        yield self._chunk(cid, created, {"content": answer}, model=model)
        yield self._chunk(cid, created, {}, "stop", model=model)
        yield self._tail(cid, created, outcome)
        yield DONE

    async def _rag_stream(
        self,
        key: ApiKey,
        req: ChatRequest,
        cid: str,
        created: int,
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
        model = outcome.model
        splitter = ReasoningSplitter(reasoning_model=spec.reasoning)
        # auto holds the answer back until it is checked (the client gets keep-alive comments, and
        # the thinking, which is never the answer, live): it sees one answer, never two spliced.
        held = mode == "auto" and bool(sources)
        guard = LoopGuard()
        looped = False
        yield self._chunk(cid, created, {"role": "assistant", "content": ""}, model=model)

        def send(piece: Piece) -> list[bytes]:
            # Thinking and answer in chunks of their own, thinking first.
            nonlocal looped
            out = []
            if piece.reasoning:
                out.append(self._chunk(cid, created, {"reasoning_content": piece.reasoning}, model=model))
            if piece.answer and not looped:
                looped = guard.feed(piece.answer)
                parts.append(piece.answer)
                if not held:
                    out.append(self._chunk(cid, created, {"content": piece.answer}, model=model))
            return out

        def take(chunk: AIMessage) -> list[bytes]:
            nonlocal usage, finish, generated
            if chunk.usage_metadata:
                usage = dict(chunk.usage_metadata)
            reason = (chunk.response_metadata or {}).get("finish_reason")
            if reason:
                finish = reason
            thinking = chunk.additional_kwargs.get("reasoning_content")
            text = chunk.content if isinstance(chunk.content, str) else ""
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
            self.m.llm_errors.labels("mid_stream").inc()
            log.warning("the LLM stream broke", extra={"error": f"{type(exc).__name__}: {exc}"})
            yield _sse(
                {"error": {"code": "llm_error", "message": f"the LLM stream broke: {type(exc).__name__}"}}
            )
            yield DONE
            return
        answer = "".join(parts)
        if looped and held and guard.keep is not None:
            answer = answer[: guard.keep]  # nothing was shown yet: keep the loop's block once
        outcome.cited = cited(answer, len(outcome.citations))
        shown = await self._settle(outcome, mode, question, answer, sources, retrieved)
        if outcome.answered_by == "model":
            shown = self._all_thinking(outcome, question, answer, splitter.reasoning_chars > 0)
        if (held or shown != answer) and shown:
            yield self._chunk(cid, created, {"content": shown}, model=model)
        # Stored before the stream ends (see _relay).
        await self._count(
            key, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens") or generated)
        )
        self._counted(outcome)
        await self._remember(key, req, question, shown, outcome)
        yield self._chunk(cid, created, {}, finish, model=model)
        yield self._tail(cid, created, outcome)
        yield DONE


__all__ = ["ChatHandler", "ChatRequest", "OmniragError"]
