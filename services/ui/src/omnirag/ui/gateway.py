"""The gateway as the UI sees it: its public API and nothing else.

Chat goes through the official ``openai`` client (streaming), exactly as any team's code would;
models, collections, sessions, uploads, ingest jobs and feedback are plain HTTP. Every failure comes out
as one ``GatewayError`` with the HTTP status, the gateway's stable ``code`` and message, and the
``Retry-After`` wait, so the page can say what happened instead of showing a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx
import openai

from omnirag.core.logging import REQUEST_ID_HEADER, request_id_var
from omnirag.ui.config import UiSettings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionUserMessageParam

log = logging.getLogger("omnirag.ui.gateway")

# The gateway scopes sessions, uploads and limits to the user a trusted key names here
# (omnirag.gateway.auth.USER_HEADER); the UI's key must have act_for_users.
USER_HEADER = "X-OmniRAG-User"


class GatewayError(Exception):
    """A gateway call that did not succeed. ``status`` is None when no answer came at all."""

    def __init__(
        self, status: int | None, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{status or '-'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _retry_after(headers: httpx.Headers | None) -> int | None:
    value = (headers or httpx.Headers()).get("retry-after", "")
    return int(value) if value.strip().isdigit() else None


def _from_response(r: httpx.Response) -> GatewayError:
    code, message = "http_error", r.reason_phrase or f"HTTP {r.status_code}"
    try:
        err = r.json().get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
    except ValueError:
        pass
    return GatewayError(r.status_code, code, message, retry_after=_retry_after(r.headers))


def _from_openai(exc: Exception) -> GatewayError:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body.get("error"), dict) else body
        return GatewayError(
            exc.status_code,
            str(err.get("code") or "http_error"),
            str(err.get("message") or exc.message),
            retry_after=_retry_after(exc.response.headers),
        )
    if isinstance(exc, openai.APITimeoutError):
        return GatewayError(None, "timeout", "the gateway did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return GatewayError(None, "unreachable", "the gateway cannot be reached")
    if isinstance(exc, openai.APIError):
        # An error event inside a stream that had already started (the LLM broke off).
        body = exc.body if isinstance(exc.body, dict) else {}
        return GatewayError(502, "stream_broken", str(body.get("message") or exc.message))
    return GatewayError(None, "client_error", f"{type(exc).__name__}: {exc}")


# The gateway's model names (omnirag.gateway.registry); anything else it lists is not offered.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
# The name that lets the gateway choose (omnirag.gateway.registry.AUTO_MODEL): its default model,
# or one that takes the message's attachments (an omni model for an image).
AUTO_MODEL = "omnirag"
MAX_MODELS = 64  # a dropdown's worth; a gateway listing more is cut, not trusted to be small
CAPABILITIES = ("text", "vision", "audio", "video", "tools", "reasoning")


def model_name(value: Any) -> str | None:
    """``value`` when it is a model name the gateway could list, else None: names come back from
    the browser, which may send anything."""
    return value if isinstance(value, str) and MODEL_NAME.match(value) else None


@dataclass(frozen=True)
class ChatModel:
    """One model the key may chat with, as ``GET /v1/models`` lists it."""

    name: str
    capabilities: tuple[str, ...] = ("text",)
    default: bool = False


def chat_models(body: Any) -> list[ChatModel]:
    """The chat models of a ``GET /v1/models`` answer, in its order: the embedder's entry (capability
    ``embeddings``) and malformed entries left out. A gateway without the ``omnirag`` object (older
    ones) lists its chat model as plain text, and its embedder as owned by ``omnirag-embedder``."""
    found: list[ChatModel] = []
    items = body.get("data") if isinstance(body, dict) else None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        name = item["id"]
        if not model_name(name) or any(m.name == name for m in found):
            continue
        extra = item.get("omnirag")
        if isinstance(extra, dict):
            caps = extra.get("capabilities")
            caps = [str(c) for c in caps] if isinstance(caps, list) else ["text"]
            if "embeddings" in caps:
                continue
            found.append(
                ChatModel(
                    name=name,
                    capabilities=tuple(c for c in CAPABILITIES if c in caps),
                    default=extra.get("default") is True,
                )
            )
        elif item.get("owned_by") != "omnirag-embedder":
            found.append(ChatModel(name=name))
        if len(found) >= MAX_MODELS:
            break
    return found


# Longest quote kept: the gateway's extract is at most 600 characters (omnirag.gateway.extract).
MAX_QUOTE_CHARS = 700
MAX_REASON_CHARS = 200
ANSWER_MODES = ("generate", "extract", "auto")


def quote_of(value: Any) -> dict[str, Any] | None:
    """The ``omnirag.quote`` of an answer, ``{"citation": n, "text": ...}``, when it is one (n a
    1-based citation number, the text bounded); else None. It comes from the gateway, or back from
    the browser's storage, which may hold anything."""
    if not isinstance(value, dict):
        return None
    n, text = value.get("citation"), value.get("text")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000:
        return None
    if not isinstance(text, str) or not text.strip():
        return None
    return {"citation": n, "text": text[:MAX_QUOTE_CHARS]}


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """What produced an answer and whether it held up, from an ``omnirag`` object (or a stored copy),
    each field checked: ``answer_mode``, ``answered_by`` ("model" / "extract" / None),
    ``grounded`` (True / False / None: not checked), ``grounding_reason``, ``fallback`` (the model's
    answer was replaced by the extract), ``quote``."""
    mode, by, grounded, reason = (
        meta.get("answer_mode"),
        meta.get("answered_by"),
        meta.get("grounded"),
        meta.get("grounding_reason"),
    )
    return {
        "answer_mode": mode if mode in ANSWER_MODES else None,
        "answered_by": by if by in ("model", "extract") else None,
        "grounded": grounded if isinstance(grounded, bool) else None,
        "grounding_reason": reason[:MAX_REASON_CHARS] if isinstance(reason, str) and reason else None,
        "fallback": meta.get("fallback") is True,
        "quote": quote_of(meta.get("quote")),
    }


@dataclass
class Answer:
    """What a streamed answer has produced so far; ``done`` once the ``omnirag`` object arrived.

    ``reasoning`` is the model's thinking (``delta.reasoning_content``), kept apart from ``text``:
    it is shown, never part of the answer the gateway stores or the key its sources are kept by.
    ``answered_by`` … ``quote`` say what produced the text (the model, or a sentence quoted from a
    source) and whether the gateway's grounding check passed (see ``provenance``)."""

    id: str | None = None
    text: str = ""
    reasoning: str = ""
    model: str | None = None  # what answered, as the chunks name it
    citations: list[dict[str, Any]] = field(default_factory=list)
    rewritten_query: str | None = None
    degraded: list[str] = field(default_factory=list)
    session_id: str | None = None
    answer_mode: str | None = None
    answered_by: str | None = None
    grounded: bool | None = None
    grounding_reason: str | None = None
    fallback: bool = False
    quote: dict[str, Any] | None = None
    done: bool = False


class GatewayClient:
    """One per app, opened in the lifespan: a pooled ``httpx.AsyncClient`` that the openai client
    shares, so chat and the other calls reuse the same connections to the gateway."""

    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.base = settings.gateway_url.rstrip("/")
        self._http: httpx.AsyncClient | None = None
        self._openai: openai.AsyncOpenAI | None = None

    @property
    def has_key(self) -> bool:
        return self.settings.api_key is not None and bool(self.settings.api_key.get_secret_value())

    def _key(self) -> str:
        # An empty key still reaches the gateway, which answers 401 with its own message.
        return self.settings.api_key.get_secret_value() if self.settings.api_key else ""

    async def open(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.request_timeout, connect=5.0), limits=limits
        )
        self._openai = openai.AsyncOpenAI(
            base_url=self.base + "/v1",
            api_key=self._key() or "missing",
            http_client=self._http,
            max_retries=0,  # a 429 is shown with its wait, not retried behind the user's back
            timeout=httpx.Timeout(self.settings.chat_timeout, connect=5.0),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("GatewayClient.open() was not called (the app's lifespan opens it)")
        return self._http

    def _headers(self, *, auth: bool = True, user: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._key()}"} if auth else {}
        if user:
            headers[USER_HEADER] = user
        rid = request_id_var.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        return headers

    async def _call(self, method: str, path: str, *, user: str | None = None, **kwargs: Any) -> Any:
        try:
            r = await self.http.request(method, self.base + path, headers=self._headers(user=user), **kwargs)
        except httpx.TimeoutException:
            raise GatewayError(None, "timeout", "the gateway did not answer in time") from None
        except httpx.HTTPError:
            raise GatewayError(None, "unreachable", "the gateway cannot be reached") from None
        if r.status_code >= 400:
            raise _from_response(r)
        try:
            return r.json()
        except ValueError:
            raise GatewayError(r.status_code, "bad_response", "the gateway's answer was not JSON") from None

    # --- health ---

    async def reachable(self) -> tuple[bool, str]:
        try:
            r = await self.http.get(self.base + "/healthz", timeout=2.0)
        except httpx.HTTPError as exc:
            return False, f"{self.base} unreachable ({type(exc).__name__})"
        detail = f"{self.base} ({r.status_code})" + ("" if self.has_key else "; no API key configured")
        return r.status_code == 200, detail

    # --- chat ---

    async def chat(
        self,
        content: str | list[dict[str, Any]],
        *,
        session_id: str,
        collection: str | None,
        model: str | None = None,
        user: str | None = None,
    ) -> AsyncIterator[Answer]:
        """Stream one turn of a conversation whose history the gateway keeps under ``session_id``,
        answered by ``model`` (None: the gateway chooses).

        Yields the growing ``Answer`` after every piece of reasoning or text and once more when the
        ``omnirag`` object (citations, rewritten question, degraded parts, what produced the answer
        and whether it is grounded) has arrived. ``UI_ANSWER_MODE``, when set, asks for an answer
        mode (else the gateway's default applies)."""
        assert self._openai is not None, "GatewayClient.open() was not called"
        extra: dict[str, Any] = {"session_id": session_id}
        if collection:
            extra["collection"] = collection
        if self.settings.top_k:
            extra["top_k"] = self.settings.top_k
        if self.settings.answer_mode:
            extra["answer_mode"] = self.settings.answer_mode
        answer = Answer(session_id=session_id)
        try:
            stream = await self._openai.chat.completions.create(
                model=model or AUTO_MODEL,
                messages=[cast("ChatCompletionUserMessageParam", {"role": "user", "content": content})],
                stream=True,
                max_tokens=self.settings.max_tokens,
                extra_body=extra,
                extra_headers=self._headers(auth=False, user=user),
            )
            async for chunk in stream:
                answer.id = answer.id or chunk.id
                if chunk.model:
                    answer.model = chunk.model
                for choice in chunk.choices:
                    if not choice.delta:
                        continue
                    # Not a field of the SDK's delta: the gateway's extra field (``reasoning_content``,
                    # as vLLM up to 0.12 and DeepSeek's API name it; newer vLLM says ``reasoning``).
                    delta_extra = choice.delta.model_extra or {}
                    thought = delta_extra.get("reasoning_content") or delta_extra.get("reasoning")
                    grew = False
                    if isinstance(thought, str) and thought:
                        answer.reasoning += thought
                        grew = True
                    if choice.delta.content:
                        answer.text += choice.delta.content
                        grew = True
                    if grew:
                        yield answer
                meta = (chunk.model_extra or {}).get("omnirag")
                if isinstance(meta, dict):
                    answer.citations = list(meta.get("citations") or [])
                    answer.rewritten_query = meta.get("rewritten_query")
                    answer.degraded = list(meta.get("degraded") or [])
                    answer.session_id = meta.get("session_id") or session_id
                    for name, value in provenance(meta).items():
                        setattr(answer, name, value)
                    answer.done = True
                    yield answer
        except openai.OpenAIError as exc:
            raise _from_openai(exc) from None
        if not answer.done:
            answer.done = True
            yield answer

    # --- the rest of the API ---

    async def models(self, user: str | None = None) -> list[ChatModel]:
        """The chat models this key may use, the gateway's default among them."""
        return chat_models(await self._call("GET", "/v1/models", user=user))

    async def collections(self, user: str | None = None) -> dict[str, str | None]:
        """The collections this key may read, each with the index version being served."""
        body = await self._call("GET", "/v1/collections", user=user)
        return {
            str(c["name"]): (str(c["version"]) if c.get("version") else None)
            for c in body.get("data", [])
            if isinstance(c, dict) and c.get("name")
        }

    async def session(self, session_id: str, user: str | None = None) -> list[dict[str, Any]]:
        """The stored messages, oldest first; [] when the gateway has none (new, expired, or another
        user's)."""
        try:
            body = await self._call("GET", f"/v1/sessions/{session_id}", user=user)
        except GatewayError as exc:
            if exc.status == 404:
                return []
            raise
        return list(body.get("messages", []))

    async def delete_session(self, session_id: str, user: str | None = None) -> bool:
        body = await self._call("DELETE", f"/v1/sessions/{session_id}", user=user)
        return bool(body.get("deleted"))

    async def upload(
        self, collection: str, filename: str, data: bytes, content_type: str, user: str | None = None
    ) -> dict[str, Any]:
        timeout = httpx.Timeout(max(self.settings.request_timeout, 60.0), connect=5.0)
        body: dict[str, Any] = await self._call(
            "POST",
            f"/v1/collections/{quote(collection, safe='')}/documents",
            files={"file": (filename, data, content_type)},
            timeout=timeout,
            user=user,
        )
        return body

    async def job(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = await self._call("GET", f"/v1/ingest/{quote(job_id, safe='')}", user=user)
        return body

    async def documents(
        self,
        collection: str,
        *,
        user: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        mine: bool = True,
    ) -> dict[str, Any]:
        """One page of the collection's documents (``mine``: those this user uploaded):
        ``{"data": [{"id", "source", "title", "origin", "chunks", "indexed_at"}], "next_cursor",
        "total"}``."""
        params: dict[str, Any] = {"limit": limit, "mine": "true" if mine else "false"}
        if cursor:
            params["cursor"] = cursor
        body: dict[str, Any] = await self._call(
            "GET", f"/v1/collections/{quote(collection, safe='')}/documents", params=params, user=user
        )
        return body

    async def delete_document(
        self, collection: str, document_id: str, user: str | None = None
    ) -> dict[str, Any]:
        """Ask for a document's removal: 202 with the job that removes it (``job_id``, ``status``);
        403 ``document_forbidden`` (another user's), 409 ``document_from_knowledge_base``, 404."""
        body: dict[str, Any] = await self._call(
            "DELETE",
            f"/v1/collections/{quote(collection, safe='')}/documents/{quote(document_id, safe='')}",
            user=user,
        )
        return body

    async def feedback(
        self,
        *,
        rating: str,
        session_id: str,
        message_id: str | None,
        message_index: int | None,
        comment: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"rating": rating, "session_id": session_id}
        if message_id:
            payload["message_id"] = message_id
        if message_index is not None:
            payload["message_index"] = message_index
        if comment:
            payload["comment"] = comment
        body: dict[str, Any] = await self._call("POST", "/v1/feedback", json=payload, user=user)
        return body
