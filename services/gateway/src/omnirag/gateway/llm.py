"""The LLM, made in one place from settings: LangChain's ``ChatOpenAI`` for the RAG chain, and a raw
OpenAI-protocol client for pass-through requests (tools, any field the gateway does not interpret).

Both talk to the same OpenAI-compatible URL: vLLM in the cluster, the local llama.cpp server, or a
hosted API. Retries happen only before a response starts; a stream that breaks is never retried,
so an answer is never sent twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from langchain_openai import ChatOpenAI

from omnirag.core.errors import BadRequest, UpstreamError
from omnirag.core.logging import REQUEST_ID_HEADER, request_id_var
from omnirag.gateway.config import GatewaySettings


def create_chat_model(
    settings: GatewaySettings,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    streaming: bool = False,
    http_async_client: httpx.AsyncClient | None = None,
) -> ChatOpenAI:
    # ``streaming`` is passed only when true: an explicit ``streaming=False`` makes LangChain's
    # ``astream`` quietly fall back to one non-streamed call (and retry it whole on a broken body).
    extra: dict[str, Any] = {"streaming": True} if streaming else {}
    return ChatOpenAI(
        model=settings.llm_model,
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        temperature=settings.llm_temperature if temperature is None else temperature,
        max_tokens=max_tokens,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_connect_retries,
        stream_usage=True,
        http_async_client=http_async_client,
        **extra,
    )


class LLMError(UpstreamError):
    """The LLM failed; the status it answered (if any) is in ``details``."""

    code = "llm_error"


def _headers(settings: GatewaySettings) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {settings.llm_api_key.get_secret_value()}"}
    rid = request_id_var.get()
    if rid:
        headers[REQUEST_ID_HEADER] = rid
    return headers


def _upstream_message(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except Exception:
        message = body[:300].decode("utf-8", "replace")
    return f"the LLM answered {status}: {message}"


class PassThrough:
    """``POST {llm_base_url}/chat/completions`` with the client's own body, streamed or not."""

    def __init__(self, settings: GatewaySettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self.url = settings.llm_base_url.rstrip("/") + "/chat/completions"

    async def _send(self, body: dict[str, Any], stream: bool) -> httpx.Response:
        request = self.client.build_request("POST", self.url, json=body, headers=_headers(self.settings))
        last: Exception | None = None
        for attempt in range(1 + self.settings.llm_connect_retries):
            try:
                response = await self.client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                last = exc
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            except httpx.TimeoutException as exc:
                raise LLMError(f"the LLM did not answer in {self.settings.llm_timeout:.0f}s") from exc
            if response.status_code in (502, 503, 504) and attempt < self.settings.llm_connect_retries:
                await response.aclose()
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 400:
                content = await response.aread()
                await response.aclose()
                message = _upstream_message(response.status_code, content)
                if response.status_code in (400, 413, 422):
                    raise BadRequest(message, code="llm_rejected_request")
                raise LLMError(message, details={"status": response.status_code})
            return response
        raise LLMError(
            f"the LLM at {self.settings.llm_base_url} is unreachable: {type(last).__name__}: {last}"
        )

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send(body, stream=False)
        try:
            result: dict[str, Any] = response.json()
        except ValueError as exc:
            raise LLMError("the LLM answered something that is not JSON") from exc
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Yield the upstream's SSE ``data:`` payloads (without the prefix), ``[DONE]`` excluded.

        The connection is opened before the first yield, so an error to open it raises here and
        the caller can still answer with a proper status."""
        response = await self._send(body, stream=True)
        return _payloads(response)


async def _payloads(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            if payload:
                yield payload.encode()
    finally:
        await response.aclose()
