"""The embedder over HTTP, typed on the shared schemas (``omnirag.core.schemas.embeddings``).

    from omnirag.core.clients.embedder import EmbedderClient, prompt_for
    async with EmbedderClient("http://127.0.0.1:8001") as embedder:
        info = await embedder.info()
        out = await embedder.embed(["a passage"], normalize=True, prompt_name=prompt_for(info, "document"))
        vectors = out.embeddings

A client either owns its connections, and then retries what a retry can fix (a refused connection, a
timeout, 429, 502-504; see ``omnirag.core.http.ServiceClient``), or borrows its caller's
``httpx.AsyncClient`` (the gateway's, whose transports hold its circuit breakers) and asks once: the
owner of those connections decides how much to wait. Either way a failure is one of the shared
errors: ``NotFound`` (404), ``Overloaded`` (429, with the embedder's Retry-After), ``InvalidInput``
(a request the schemas refuse before it is sent), ``UpstreamError`` (anything else, an unreachable
embedder or an answer that is not the schema's included; through a borrowed client its ``__cause__``
is the transport's error, by which the gateway tells an open circuit breaker).

What a caller does around the calls (the indexer's batches and progress, the retriever's cached
model info, the gateway's language check) stays with the caller.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from omnirag.core.clients import request_id_headers
from omnirag.core.errors import InvalidInput, NotFound, Overloaded, UpstreamError
from omnirag.core.http import ServiceClient, _error_message
from omnirag.core.schemas.embeddings import (
    EmbedderInfo,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    Precision,
)

Role = Literal["query", "document"]
_Model = TypeVar("_Model", bound=BaseModel)


def prompt_for(info: EmbedderInfo, role: Role) -> str | None:
    """The prompt name for ``role`` when the served model has one, else None: models trained with a
    query or passage prompt (e5, bge, ...) need it, and only the embedder knows its model's prompts."""
    return role if role in info.prompts else None


def _request(schema: type[_Model], /, **fields: Any) -> _Model:
    try:
        return schema(**fields)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInput(f"not sent to the embedder: {detail}") from exc


def _parse(model: type[_Model], response: httpx.Response) -> _Model:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise UpstreamError(
            f"the embedder's answer to {response.request.url.path} does not fit {model.__name__}: "
            f"{exc.error_count()} error(s)"
        ) from exc


def _check(response: httpx.Response) -> httpx.Response:
    """The error a borrowed client's answer means (an owned one's are mapped by ServiceClient)."""
    status = response.status_code
    if status < 400:
        return response
    message = _error_message(response)
    if status == 404:
        raise NotFound(f"embedder: {message}")
    if status == 429:
        after = response.headers.get("retry-after", "")
        raise Overloaded(
            f"the embedder is overloaded: {message}", retry_after=int(after) if after.isdigit() else 1
        )
    raise UpstreamError(f"embedder answered {status}: {message}", details={"status": status})


class EmbedderClient:
    """``/v1/info``, ``/v1/embed`` and ``/v1/embeddings`` of one embedder service."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.1,
        headers: dict[str, str] | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        """``headers``: sent with every call (the service token, ``ServiceSettings.service_headers``,
        which the embedder may require). ``async_client``: borrowed, never closed here; ``retries``
        and ``backoff`` apply only to a client's own connections."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}
        self._borrowed = async_client
        self._own: ServiceClient | None = None
        if async_client is None:
            self._own = ServiceClient(
                self.base_url,
                name="embedder",
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                headers=headers,
            )

    async def __aenter__(self) -> EmbedderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own is not None:
            await self._own.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        retry: bool,
        request_timeout: float | None,
    ) -> httpx.Response:
        # Defaults left out: the embedder's defaults are the schema's, and a smaller body is parsed sooner.
        payload = None if body is None else body.model_dump(mode="json", exclude_defaults=True)
        if self._own is not None:
            extra: dict[str, Any] = {} if request_timeout is None else {"timeout": request_timeout}
            return await self._own.request(method, path, retry=retry, json=payload, **extra)
        assert self._borrowed is not None
        try:
            response = await self._borrowed.request(
                method,
                self.base_url + path,
                json=payload,
                headers=self.headers | request_id_headers(),
                timeout=self.timeout if request_timeout is None else request_timeout,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the embedder is unreachable: {type(exc).__name__}") from exc
        return _check(response)

    async def info(self, *, retry: bool = True, request_timeout: float | None = None) -> EmbedderInfo:
        """What the embedder serves: model, dimension, languages, prompts. ``retry`` False for a probe,
        which is asked again on its own schedule."""
        return _parse(
            EmbedderInfo, await self._call("GET", "/v1/info", retry=retry, request_timeout=request_timeout)
        )

    async def embed(
        self,
        inputs: list[str],
        *,
        normalize: bool = False,
        precision: Precision = "float32",
        truncate_dim: int | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        request_timeout: float | None = None,
    ) -> EmbedResponse:
        """``POST /v1/embed``: one vector per input, in order, in ``.embeddings``."""
        body = _request(
            EmbedRequest,
            inputs=inputs,
            normalize=normalize,
            precision=precision,
            truncate_dim=truncate_dim,
            prompt_name=prompt_name,
            prompt=prompt,
        )
        response = await self._call(
            "POST", "/v1/embed", body=body, retry=True, request_timeout=request_timeout
        )
        out = _parse(EmbedResponse, response)
        if out.embeddings is None or len(out.embeddings) != len(inputs):
            count = "no" if out.embeddings is None else len(out.embeddings)
            raise UpstreamError(f"the embedder answered {count} vectors for {len(inputs)} inputs")
        return out

    async def embeddings(
        self,
        inputs: list[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        request_timeout: float | None = None,
    ) -> EmbeddingsResponse:
        """``POST /v1/embeddings`` (OpenAI's surface, floats): ``.data`` sorted by ``index``."""
        body = _request(EmbeddingsRequest, input=inputs, model=model, dimensions=dimensions)
        response = await self._call(
            "POST", "/v1/embeddings", body=body, retry=True, request_timeout=request_timeout
        )
        out = _parse(EmbeddingsResponse, response)
        if len(out.data) != len(inputs) or any(isinstance(d.embedding, str) for d in out.data):
            raise UpstreamError(
                f"the embedder answered {len(out.data)} float vectors for {len(inputs)} inputs"
            )
        out.data.sort(key=lambda item: item.index)
        return out
