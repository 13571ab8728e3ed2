"""A pass-through turn: the conversation goes to the model as the client sent it (tools, any field
the gateway does not interpret), and its answer comes back with thinking moved under
``reasoning_content`` and the ``omnirag`` object added. A stream is relayed chunk by chunk; most
chunks go out as the model wrote them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson

from omnirag.gateway.auth import ApiKey
from omnirag.gateway.chat.request import OMNIRAG_FIELDS, ChatRequest
from omnirag.gateway.chat.sse import sse
from omnirag.gateway.chat.turn import Answer, Outcome, TurnSteps, estimate
from omnirag.gateway.messages import prepare
from omnirag.gateway.rag import answer_max_tokens, message_text
from omnirag.gateway.reasoning import FIELDS, Piece, ReasoningSplitter, reasoning_field, split_message
from omnirag.gateway.registry import ModelSpec

if TYPE_CHECKING:
    from omnirag.gateway.state import GatewayState


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


def _empty(chunk: dict[str, Any]) -> bool:
    """A chunk that carries nothing once held-back text is taken out of it."""
    if chunk.get("usage") or not chunk.get("choices"):
        return False
    return all(
        c.get("finish_reason") is None and not any(v for v in (c.get("delta") or {}).values())
        for c in chunk["choices"]
    )


class PassThroughTurn:
    """Pass-through turns, one object per app."""

    def __init__(self, gw: GatewayState, steps: TurnSteps) -> None:
        self.gw = gw
        self.s = gw.settings
        self.m = gw.metrics
        self.steps = steps

    async def answer(self, key: ApiKey, req: ChatRequest, spec: ModelSpec) -> Answer:
        started = time.perf_counter()
        outcome = Outcome(session_id=req.session_id, model=spec.name)
        history = await self.steps.history(key, req, outcome)
        prepared = await prepare(history + req.messages[-1:], self.s, self.gw.ocr, model=spec)
        body = req.model_dump(exclude_none=True, exclude=set(OMNIRAG_FIELDS) | {"max_completion_tokens"})
        # Some servers (llama.cpp) refuse an assistant turn whose content is null beside tool_calls,
        # which is what OpenAI clients send back; an empty string means the same.
        body["messages"] = [
            m | {"content": ""} if m.get("role") == "assistant" and m.get("content") is None else m
            for m in prepared.messages
        ]
        body["model"] = spec.served
        body["max_tokens"] = answer_max_tokens(spec, self.steps.max_tokens(req))
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
                answer = self.steps.all_thinking(
                    outcome, prepared.question, pieces[0].answer, bool(pieces[0].reasoning)
                )
                if answer != pieces[0].answer:
                    message["content"] = answer
            else:
                answer = ""
            usage = result.get("usage") or {}
            await self.steps.count(
                key,
                int(usage.get("prompt_tokens") or prompt_estimate),
                # The upstream's count has the thinking in it (vLLM counts every generated token).
                int(usage.get("completion_tokens") or sum(estimate(p) for p in pieces)),
            )
            await self.steps.remember(key, req, prepared.question, answer, outcome)
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
                    shown = self.steps.all_thinking(outcome, question, whole, splitter.reasoning_chars > 0)
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
                            yield sse(
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
                    yield sse(chunk) if changed else b"data: " + payload + b"\n\n"
                # An upstream that ended without a finish_reason: what its splitters hold goes out.
                for index in sorted(set(splitters) - finished):
                    if splitters[index].state != "answer" or splitters[index].pending:
                        last: dict[str, Any] = {"index": index, "delta": {}, "finish_reason": None}
                        altered, before = split(last, flush=True)
                        if before:
                            last["delta"]["reasoning_content"] = before
                        if not _empty({"choices": [last]}):
                            yield sse(envelope | {"object": "chat.completion.chunk", "choices": [last]})
        except Exception as exc:
            for event in self.steps.broken(exc):
                yield event
            return
        async for event in self.steps.ended(
            key,
            req,
            question,
            "".join(answer),
            outcome,
            envelope,
            prompt_tokens=int(usage.get("prompt_tokens") or prompt_estimate),
            completion_tokens=int(usage.get("completion_tokens") or generated),
        ):
            yield event
