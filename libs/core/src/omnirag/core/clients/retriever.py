"""The retriever over HTTP, for plain code and for LangChain.

    from omnirag.core.clients.retriever import OmniragVectorStore
    store = OmniragVectorStore(base_url="http://127.0.0.1:8002", collection="docs")
    retriever = store.as_retriever(search_kwargs={"k": 4, "filter": {"kb": "docs"}})
    docs = retriever.invoke("how do I deploy?")

``OmniragRetriever`` is the same thing as a ``BaseRetriever`` with its options as fields. The store is
read-only: documents go in through the indexer, never from a client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field, PrivateAttr

from omnirag.core.clients import request_id_headers as _headers
from omnirag.core.errors import Conflict, InvalidInput, NotFound, UpstreamError
from omnirag.core.schemas.retrieval import SearchMode


def _body(
    *,
    query: str | None = None,
    vector: list[float] | None = None,
    k: int = 4,
    filter: dict[str, Any] | None = None,
    mode: SearchMode = "hybrid",
    score_threshold: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"k": k, "mode": mode}
    if query is not None:
        body["query"] = query
    if vector is not None:
        body["vector"] = list(vector)
    if filter:
        body["filter"] = filter
    if score_threshold is not None:
        body["score_threshold"] = score_threshold
    return body


def _check(response: httpx.Response, collection: str) -> dict[str, Any]:
    if response.status_code == 404:
        raise NotFound(f"retriever: no collection {collection!r}")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text[:200]
        raise UpstreamError(
            f"retriever answered {response.status_code}: {message}", details={"status": response.status_code}
        )
    result: dict[str, Any] = response.json()
    return result


def _check_documents(response: httpx.Response) -> dict[str, Any]:
    """A documents answer, or its error with the retriever's own code (``collection_not_found``,
    ``document_not_found``, ``invalid_cursor``) so a caller can pass it on."""
    if response.status_code < 400:
        result: dict[str, Any] = response.json()
        return result
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except Exception:
        code, message = "", response.text[:200]
    if response.status_code == 404:
        raise NotFound(message, code=code or "not_found")
    if response.status_code in (400, 422):
        raise InvalidInput(message, code=code or "invalid_input")
    if response.status_code == 409:  # a collection the retriever refuses to serve, say
        raise Conflict(message, code=code or "conflict")
    raise UpstreamError(
        f"retriever answered {response.status_code}: {message}", details={"status": response.status_code}
    )


def _document_params(
    limit: int, cursor: str | None, origin: str | None, principal: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("cursor", cursor), ("origin", origin), ("principal", principal)):
        if value is not None:
            params[name] = value
    return params


def to_documents(result: dict[str, Any]) -> list[tuple[Document, float]]:
    out = []
    for hit in result["hits"]:
        meta = dict(hit["metadata"])
        meta.setdefault("id", hit["id"])
        out.append((Document(page_content=hit["text"], metadata=meta, id=hit["id"]), float(hit["score"])))
    return out


class RetrieverClient:
    """Sync and async search against one retriever service."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}
        # The sync client is kept: a new connection per search would add a TCP setup to each. An
        # async client is bound to the event loop it was made in, so async searches make their own
        # unless the caller (a service with its own loop) lends one that it keeps open.
        self._sync: httpx.Client | None = None
        self._async = async_client

    def _url(self, collection: str) -> str:
        return f"{self.base_url}/v1/collections/{collection}/search"

    def _documents_url(self, collection: str, doc_id: str | None = None) -> str:
        url = f"{self.base_url}/v1/collections/{collection}/documents"
        return url if doc_id is None else f"{url}/{doc_id}"

    def _get_sync(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout, headers=self.headers)
        try:
            r = self._sync.get(url, params=params, headers=_headers())
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the retriever is unreachable: {type(exc).__name__}") from exc
        return _check_documents(r)

    async def _get_async(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            if self._async is not None:
                r = await self._async.get(
                    url, params=params, headers=self.headers | _headers(), timeout=self.timeout
                )
            else:
                async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
                    r = await client.get(url, params=params, headers=_headers())
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the retriever is unreachable: {type(exc).__name__}") from exc
        return _check_documents(r)

    def list_documents(
        self,
        collection: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        origin: str | None = None,
        principal: str | None = None,
    ) -> dict[str, Any]:
        """A page of the collection's documents (see ``DocumentList``); ``next_cursor`` continues."""
        params = _document_params(limit, cursor, origin, principal)
        return self._get_sync(self._documents_url(collection), params)

    async def alist_documents(
        self,
        collection: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        origin: str | None = None,
        principal: str | None = None,
    ) -> dict[str, Any]:
        params = _document_params(limit, cursor, origin, principal)
        return await self._get_async(self._documents_url(collection), params)

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any]:
        """One document (``DocumentSummary``); NotFound with code ``document_not_found`` if absent."""
        return self._get_sync(self._documents_url(collection, doc_id))

    async def aget_document(self, collection: str, doc_id: str) -> dict[str, Any]:
        return await self._get_async(self._documents_url(collection, doc_id))

    def search(self, collection: str, **options: Any) -> dict[str, Any]:
        """Options: query, vector, k, filter, mode, score_threshold (see SearchRequest)."""
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout, headers=self.headers)
        r = self._sync.post(self._url(collection), headers=_headers(), json=_body(**options))
        return _check(r, collection)

    async def asearch(self, collection: str, **options: Any) -> dict[str, Any]:
        if self._async is not None:
            r = await self._async.post(
                self._url(collection),
                headers=self.headers | _headers(),
                json=_body(**options),
                timeout=self.timeout,
            )
            return _check(r, collection)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            r = await client.post(self._url(collection), headers=_headers(), json=_body(**options))
        return _check(r, collection)


class OmniragRetriever(BaseRetriever):
    """A remote collection as a LangChain retriever."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str
    collection: str
    k: int = 4
    filter: dict[str, Any] | None = None
    mode: SearchMode = "hybrid"
    score_threshold: float | None = None
    timeout: float = 30.0
    headers: dict[str, str] = Field(default_factory=dict)

    _http: RetrieverClient | None = PrivateAttr(default=None)

    def _client(self) -> RetrieverClient:
        if self._http is None:
            self._http = RetrieverClient(self.base_url, timeout=self.timeout, headers=self.headers)
        return self._http

    def _kwargs(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "filter": self.filter,
            "mode": self.mode,
            "score_threshold": self.score_threshold,
        }

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        result = self._client().search(self.collection, query=query, **self._kwargs())
        return [doc for doc, _ in to_documents(result)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        result = await self._client().asearch(self.collection, query=query, **self._kwargs())
        return [doc for doc, _ in to_documents(result)]


class OmniragVectorStore(VectorStore):
    """A read-only LangChain ``VectorStore`` whose searches run in the retriever service.

    Search keyword arguments: ``filter`` (metadata conditions), ``mode`` (dense, sparse, hybrid),
    ``score_threshold``. Scores are the service's: cosine for dense, fused 0..1 for hybrid.
    """

    def __init__(
        self,
        base_url: str,
        collection: str,
        *,
        mode: SearchMode = "hybrid",
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.client = RetrieverClient(base_url, timeout=timeout, headers=headers, async_client=async_client)
        self.collection = collection
        self.mode: SearchMode = mode

    @property
    def embeddings(self) -> Embeddings | None:
        return None  # queries are embedded by the service

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> list[str]:
        raise NotImplementedError(
            "the retriever is read-only; add documents through the indexer or the gateway"
        )

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> OmniragVectorStore:
        raise NotImplementedError("the retriever is read-only; build collections with the indexer")

    def _opts(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "filter": kwargs.get("filter"),
            "mode": kwargs.get("mode", self.mode),
            "score_threshold": kwargs.get("score_threshold"),
        }

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return to_documents(self.client.search(self.collection, query=query, k=k, **self._opts(kwargs)))

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        opts = self._opts(kwargs) | {"mode": "dense"}
        return [
            doc for doc, _ in to_documents(self.client.search(self.collection, vector=embedding, k=k, **opts))
        ]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return to_documents(
            await self.client.asearch(self.collection, query=query, k=k, **self._opts(kwargs))
        )

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score(query, k, **kwargs)
