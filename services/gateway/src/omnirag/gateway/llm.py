"""The LLMs, made in one place from each model's entry (:mod:`omnirag.gateway.registry`): LangChain's
``ChatOpenAI`` for the RAG chain, and a raw OpenAI-protocol client for pass-through requests (tools,
any field the gateway does not interpret).

Both talk to the model's OpenAI-compatible URL: vLLM in the cluster, the local llama.cpp server, or
a hosted API. Retries happen only before a response starts; a stream that breaks is never retried,
so an answer is never sent twice.

Pass-through runs on aiohttp: it is the gateway's hottest path, and httpx's connection pool
(httpcore) scans every pooled connection on every request (encode/httpcore#928). Measured on this
machine against an instant upstream, client CPU per call: httpx 0.8-1.2 ms with one call at a time
and 1.6-2.0 ms with 32 at once; aiohttp 0.13-0.19 ms. ``ChatOpenAI`` needs an httpx client: it
gets the openai SDK's ``DefaultAioHttpClient`` (httpx's interface on aiohttp's connections,
0.4-0.5 ms), made in app.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson
from langchain_openai import ChatOpenAI

from omnirag.core.errors import BadRequest, UpstreamError
from omnirag.core.logging import REQUEST_ID_HEADER, request_id_var
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.reasoning import ReasoningChatOpenAI
from omnirag.gateway.registry import ModelSpec, single


def create_chat_model(
    settings: GatewaySettings,
    spec: ModelSpec | None = None,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    streaming: bool = False,
    http_async_client: httpx.AsyncClient | None = None,
) -> ChatOpenAI:
    # ``streaming`` is passed only when true: an explicit ``streaming=False`` makes LangChain's
    # ``astream`` quietly fall back to one non-streamed call (and retry it whole on a broken body).
    extra: dict[str, Any] = {"streaming": True} if streaming else {}
    spec = spec or single(settings)
    # Keeps a reasoning model's thinking field, which ChatOpenAI drops (see reasoning.py).
    return ReasoningChatOpenAI(
        model=spec.served,
        base_url=spec.base_url,
        api_key=spec.api_key,
        temperature=settings.llm_temperature if temperature is None else temperature,
        max_tokens=max_tokens,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_connect_retries,
        stream_usage=True,
        http_async_client=http_async_client,
        **extra,
    )


def token_limit(spec: ModelSpec | GatewaySettings, n: int) -> dict[str, Any]:
    """Bind arguments that cap an answer at ``n`` tokens under the name the LLM reads.

    LangChain sends ``max_tokens`` as ``max_completion_tokens`` (OpenAI's newer name), which the
    llama.cpp server ignores — answers then run to the context's end. ``max_tokens`` is read by
    llama.cpp, vLLM and OpenAI's chat models; OpenAI's reasoning models need the newer name."""
    param = spec.max_tokens_param if isinstance(spec, ModelSpec) else spec.llm_max_tokens_param
    if param == "max_completion_tokens":
        return {"max_tokens": n}
    return {"extra_body": {"max_tokens": n}}


class LLMError(UpstreamError):
    """The LLM failed; the status it answered (if any) is in ``details``."""

    code = "llm_error"


def _upstream_message(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except Exception:
        message = body[:300].decode("utf-8", "replace")
    return f"the LLM answered {status}: {message}"


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # what orjson refuses (lone surrogates, integers over 64 bits) the stdlib writes
        return json.dumps(body, separators=(",", ":")).encode()


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / ALL_PROXY / NO_PROXY give for ``url``, as httpx's default client
    honours them. Read once: aiohttp's ``trust_env`` would read the environment on every request."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def create_passthrough_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The pass-through's connection pool; made in the lifespan (it needs the running loop)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=5.0),
        # As the httpx client it replaces: connecting may take 5 s; waiting for a pooled connection
        # and each read (a stream's next token included) may take llm_timeout.
        timeout=aiohttp.ClientTimeout(
            total=None, connect=settings.llm_timeout, sock_connect=5.0, sock_read=settings.llm_timeout
        ),
    )


# Failures before the LLM has the request: safe to send it again. aiohttp >= 3.10 tells a connect
# timeout (retried) from a read timeout (not); 3.9 raises ServerTimeoutError for both.
_RETRIED: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    *((aiohttp.ConnectionTimeoutError,) if hasattr(aiohttp, "ConnectionTimeoutError") else ()),
)


class PassThrough:
    """``POST {base_url}/chat/completions`` of one model with the client's own body, streamed or not.
    One per model; they share the app's connection pool (``session``)."""

    def __init__(
        self, settings: GatewaySettings, session: aiohttp.ClientSession, spec: ModelSpec | None = None
    ) -> None:
        self.settings = settings
        self.session = session
        self.spec = spec or single(settings)
        self.base_url = self.spec.base_url
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        self.proxy = env_proxy(self.url)
        self._headers = {
            "Authorization": f"Bearer {self.spec.api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }

    def _request_headers(self) -> dict[str, str]:
        rid = request_id_var.get()
        return self._headers | {REQUEST_ID_HEADER: rid} if rid else self._headers

    async def _send(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The response once its status and headers have arrived; an error status raises."""
        data = _dumps(body)
        headers = self._request_headers()
        retries = self.settings.llm_connect_retries
        last: BaseException | None = None
        for attempt in range(1 + retries):
            if attempt:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
            try:
                response = await self.session.post(self.url, data=data, headers=headers, proxy=self.proxy)
            except _RETRIED as exc:
                last = exc
                continue
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise LLMError(f"the LLM did not answer in {self.settings.llm_timeout:.0f}s") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise LLMError(f"the LLM request failed: {type(exc).__name__}: {exc}") from exc
            status = response.status
            if status in (502, 503, 504) and attempt < retries:
                response.close()
                last = LLMError(f"the LLM answered {status}")
                continue
            if status >= 400:
                try:
                    content = await response.read()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    content = b""
                finally:
                    response.release()
                message = _upstream_message(status, content)
                if status in (400, 413, 422):
                    raise BadRequest(message, code="llm_rejected_request")
                raise LLMError(message, details={"status": status})
            return response
        raise LLMError(f"the LLM at {self.base_url} is unreachable: {type(last).__name__}: {last}")

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send(body)
        try:
            content = await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise LLMError(f"the LLM did not answer in {self.settings.llm_timeout:.0f}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise LLMError(f"the LLM answer broke off: {type(exc).__name__}: {exc}") from exc
        finally:
            response.release()  # after a whole body: back to the pool; cancelled midway: closed
        try:
            result = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise LLMError("the LLM answered something that is not JSON") from exc
        if not isinstance(result, dict):
            raise LLMError("the LLM answered something that is not a JSON object")
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """Yield the upstream's SSE ``data:`` payloads (without the prefix), ``[DONE]`` excluded.

        The connection is opened before the first yield, so an error to open it raises here and
        the caller can still answer with a proper status. Closing the iterator early (the client
        left) closes the upstream connection, which stops the generation there."""
        response = await self._send(body)
        return _payloads(response)


def _data(line: bytes) -> bytes | None:
    """The payload of an SSE ``data:`` line; None for other fields, comments and blank lines."""
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip()


async def _payloads(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    done = False
    try:
        pending = b""
        # Whatever has arrived, a token's event or several: lines are cut here rather than with
        # StreamReader.readline, which refuses a line longer than its buffer (a big tool call).
        async for data in response.content.iter_any():
            if b"\n" not in data:
                pending += data
                continue
            data = pending + data
            cut = data.rindex(b"\n") + 1
            pending = data[cut:]
            for line in data[:cut].splitlines():
                payload = _data(line)
                if payload == b"[DONE]":
                    done = True
                    return
                if payload:
                    yield payload
        for line in pending.splitlines():  # a last line without its newline
            payload = _data(line)
            if payload == b"[DONE]":
                break
            if payload:
                yield payload
        done = True
    finally:
        if done:
            response.release()  # reused if the body has ended, else closed
        else:
            response.close()  # the client left or the stream broke: hang up on the LLM
