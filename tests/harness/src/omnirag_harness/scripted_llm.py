"""A scripted OpenAI-compatible upstream that replays the output shapes of vLLM serving a reasoning
model, for tests of the gateway's handling of them.

Why it exists: the models the chart serves (DeepSeek-R1-0528-Qwen3-8B, Qwen2.5-Omni-3B) need a GPU
and cannot run on the build machines, and the local llama.cpp model never reasons. What the gateway
must get right is a mechanism — reading each shape a reasoning model's answer arrives in, split at
any point — so this server replays those shapes byte for byte as vLLM writes them, over real HTTP
(a threaded server on 127.0.0.1, a random port), streamed (SSE, ``data: [DONE]``) or not, with
``usage``. It is not a fake of a feature: it generates nothing and decides nothing; everything the
gateway does with what it receives runs for real, and every path that can run here with a real
model (llama.cpp with SmolLM2) is tested with it elsewhere.

The shapes (``scripted_llm(responses)``):

- ``ReasoningField(reasoning, answer)``: vLLM started with ``--reasoning-parser``. The reasoning
  comes in its own field beside ``content``, on the message and on stream deltas. Its name changed:
  vLLM before 0.11 wrote ``reasoning_content`` (as DeepSeek's API and several OpenAI-compatible
  servers still do); 0.11 renamed it ``reasoning``, kept the old name for a while, then dropped
  it, so v0.33 (the chart's image) writes ``reasoning`` only. ``field`` picks which.
- ``InlineThink(reasoning, answer)``: no reasoning parser; ``<think>…</think>`` is part of
  ``content``. ``open_tag=False``: only ``</think>`` appears, as with DeepSeek-R1-0528, whose chat
  template already ends the prompt with ``<think>\\n``.
- ``Plain(answer)``: a model that does not reason, or one whose thinking was turned off.
- ``ToolCallAfterReasoning(reasoning, name, arguments)``: reasoning, then a tool call
  (``--enable-auto-tool-choice``): ``content`` null, ``finish_reason`` ``tool_calls``.

Stream boundaries are the test's to choose: ``chunk_chars`` cuts every text into deltas of that
many characters (1: every character, so every tag is split at every point), or ``cuts`` gives the
exact positions at which the whole text (reasoning and answer, tags included, as one string) is
cut. ``wire_bytes`` also writes the SSE bytes in pieces of that size.

The server keeps every request body it received (``.requests``, in order) and its headers
(``.headers``), so a test asserts what the gateway sent: the model name, ``chat_template_kwargs``,
``max_tokens``. ``responses`` is one script (every request gets it), a list (one per request, in
order; past its end the server answers 500), or a callable of the request body (the rewrite call
and the answer call can get different scripts).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from omnirag_harness.http_server import LocalHTTPServer

__all__ = [
    "InlineThink",
    "Plain",
    "ReasoningField",
    "Script",
    "ScriptedLLM",
    "ToolCallAfterReasoning",
    "scripted_llm",
    "tokens",
]

ReasoningName = Literal["reasoning", "reasoning_content"]


def tokens(text: str) -> int:
    """The token count the server reports for ``text``: one per 4 characters, rounded up. Tests
    compare the gateway's counts with this, so it only has to be deterministic."""
    return (len(text) + 3) // 4


@dataclass(frozen=True, kw_only=True)
class _Common:
    """Options every script shares, keyword-only: ``ReasoningField("thought", "answer", chunk_chars=1)``."""

    chunk_chars: int = 0  # 0: one delta per part (reasoning, answer); n: deltas of n characters
    cuts: Sequence[int] | None = None  # exact cut positions in the whole text (wins over chunk_chars)
    wire_bytes: int = 0  # 0: each SSE event written whole; n: the byte stream in pieces of n
    finish_reason: str | None = None  # None: "stop" (or "tool_calls")
    usage: bool = True  # False: no usage, neither in the body nor as a stream's last chunk
    prompt_tokens: int = 11


@dataclass(frozen=True)
class ReasoningField(_Common):
    reasoning: str = ""
    answer: str = ""
    field: ReasoningName = "reasoning"


@dataclass(frozen=True)
class InlineThink(_Common):
    reasoning: str = ""
    answer: str = ""
    open_tag: bool = True


@dataclass(frozen=True)
class Plain(_Common):
    answer: str = ""


@dataclass(frozen=True)
class ToolCallAfterReasoning(_Common):
    reasoning: str = ""
    name: str = "get_weather"
    arguments: str = '{"city": "Paris"}'
    field: ReasoningName | None = "reasoning"  # None: the reasoning inline in content (no parser)
    call_id: str = "call_0123456789abcdef"


Script = ReasoningField | InlineThink | Plain | ToolCallAfterReasoning
Responses = Script | Sequence[Script] | Callable[[dict[str, Any]], Script]


def _inline(reasoning: str, answer: str, open_tag: bool) -> str:
    return ("<think>\n" if open_tag else "") + reasoning + "\n</think>\n\n" + answer


def _parts(script: Script) -> list[tuple[str, str]]:
    """The script's text as (field, text) in the order a model writes it; field is "content" or
    the reasoning field's name."""
    if isinstance(script, ReasoningField):
        return [(script.field, script.reasoning), ("content", script.answer)]
    if isinstance(script, InlineThink):
        return [("content", _inline(script.reasoning, script.answer, script.open_tag))]
    if isinstance(script, ToolCallAfterReasoning):
        if script.field is None:
            return [("content", _inline(script.reasoning, "", True))]
        return [(script.field, script.reasoning)]
    return [("content", script.answer)]


def _split(parts: list[tuple[str, str]], script: Script) -> list[tuple[str, str]]:
    """The deltas: each part cut at the script's boundaries (a cut never spans two fields)."""
    out: list[tuple[str, str]] = []
    if script.cuts is not None:
        cuts = sorted(set(script.cuts))
        start = 0
        for name, text in parts:
            end = start + len(text)
            points = [start] + [c for c in cuts if start < c < end] + [end]
            out += [(name, text[a - start : b - start]) for a, b in itertools.pairwise(points)]
            start = end
        return [(n, t) for n, t in out if t]
    for name, text in parts:
        size = script.chunk_chars or max(len(text), 1)
        out += [(name, text[i : i + size]) for i in range(0, len(text), size)]
    return out


def _usage(script: Script) -> dict[str, Any]:
    generated = "".join(text for _, text in _parts(script))
    if isinstance(script, ToolCallAfterReasoning):
        generated += script.arguments
    completion = tokens(generated)
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": completion,  # vLLM counts every generated token, reasoning included
        "total_tokens": script.prompt_tokens + completion,
    }


def _tool_call(script: ToolCallAfterReasoning) -> dict[str, Any]:
    return {
        "id": script.call_id,
        "type": "function",
        "function": {"name": script.name, "arguments": script.arguments},
    }


def _finish(script: Script) -> str:
    if script.finish_reason:
        return script.finish_reason
    return "tool_calls" if isinstance(script, ToolCallAfterReasoning) else "stop"


def completion_body(script: Script, model: str) -> dict[str, Any]:
    """A whole (non-streamed) chat.completion as vLLM writes it."""
    message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
    for name, text in _parts(script):
        message[name] = (message.get(name) or "") + text
    if isinstance(script, ToolCallAfterReasoning):
        message["tool_calls"] = [_tool_call(script)]
        if script.field is None:
            message["content"] = message["content"] or None
    elif message["content"] is None:
        message["content"] = ""
    body: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(script)}],
    }
    if script.usage:
        body["usage"] = _usage(script)
    return body


def stream_events(script: Script, model: str, include_usage: bool) -> list[dict[str, Any]]:
    """The chat.completion.chunk events of a streamed answer, in order ([DONE] not included)."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({name: text}) for name, text in _split(_parts(script), script)]
    if isinstance(script, ToolCallAfterReasoning):
        call = _tool_call(script)
        events.append(
            chunk({"tool_calls": [{"index": 0, **call, "function": {"name": script.name, "arguments": ""}}]})
        )
        size = script.chunk_chars or max(len(script.arguments), 1)
        for i in range(0, len(script.arguments), size):
            events.append(
                chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": script.arguments[i : i + size]}}]}
                )
            )
    events.append(chunk({}, _finish(script)))
    if include_usage and script.usage:
        events.append(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(script),
            }
        )
    return events


class ScriptedLLM(str):
    """The base URL (``http://127.0.0.1:PORT/v1``), carrying what the server received."""

    requests: list[dict[str, Any]]
    headers: list[dict[str, str]]

    def __new__(cls, url: str) -> ScriptedLLM:
        self = super().__new__(cls, url)
        self.requests = []
        self.headers = []
        return self

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if "messages" in r]


@dataclass
class _State:
    responses: Responses
    models: Sequence[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: int = 0

    def pick(self, body: dict[str, Any]) -> Script | None:
        if callable(self.responses):
            return self.responses(body)
        if isinstance(self.responses, Sequence):
            with self.lock:
                index = self.served
                self.served += 1
            return self.responses[index] if index < len(self.responses) else None
        return self.responses


def _handler(state: _State, upstream: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: pytest shows the test's own output

        def _json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "vllm"} for m in state.models]
                self._json(200, {"object": "list", "data": data})
            elif self.path == "/health":
                self._json(200, {})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._json(400, {"error": {"message": "the body is not JSON", "code": 400}})
                return
            with state.lock:
                upstream.requests.append(body)
                upstream.headers.append(dict(self.headers.items()))
            script = state.pick(body)
            if script is None:
                self._json(500, {"error": {"message": "the script has no response left", "code": 500}})
                return
            model = str(body.get("model") or (state.models[0] if state.models else "scripted"))
            if not body.get("stream"):
                self._json(200, completion_body(script, model))
                return
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            wire = b"".join(
                b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n"
                for e in stream_events(script, model, include_usage)
            )
            wire += b"data: [DONE]\n\n"
            if script.wire_bytes:
                pieces = [wire[i : i + script.wire_bytes] for i in range(0, len(wire), script.wire_bytes)]
            else:  # one piece per event, as vLLM flushes them
                pieces = [p + b"\n\n" for p in wire.split(b"\n\n") if p]
            for piece in pieces:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


@contextmanager
def scripted_llm(responses: Responses, *, models: Sequence[str] = ("scripted",)) -> Iterator[ScriptedLLM]:
    """Serve ``responses`` on 127.0.0.1 and a free port; yield the base URL (``…/v1``) with
    ``.requests``. ``models`` is what ``GET /v1/models`` lists."""
    state = _State(responses=responses, models=models)
    server = LocalHTTPServer(BaseHTTPRequestHandler)
    upstream = ScriptedLLM(server.url + "/v1")
    server.RequestHandlerClass = _handler(state, upstream)
    with server:
        yield upstream
