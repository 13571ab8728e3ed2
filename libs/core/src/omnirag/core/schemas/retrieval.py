"""The retriever's API, shared by the retriever, the gateway and the LangChain client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SearchMode = Literal["dense", "sparse", "hybrid"]
FilterValue = str | int | float | bool
# A filter is {field: value | {"$eq"|"$ne": value} | {"$in"|"$nin": [values]}}, all fields ANDed.
Filter = dict[str, Any]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, min_length=1, max_length=8192, description="Text to search for.")
    vector: list[float] | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="A query vector from the collection's embedding model.",
    )
    k: int = Field(5, ge=1, description="Hits wanted; at most the service's max_k.")
    filter: Filter | None = Field(
        None, description="Metadata conditions: equality, $in, $ne (and $eq, $nin)."
    )
    mode: SearchMode = "hybrid"
    score_threshold: float | None = Field(
        None,
        description="Drop hits scoring below this. Scores are per mode: cosine (dense), BM25 (sparse), "
        "fused 0..1 (hybrid).",
    )

    @model_validator(mode="after")
    def _needs_something(self) -> SearchRequest:
        if self.query is None and self.vector is None:
            raise ValueError("give query (text) or vector")
        if self.mode == "sparse" and self.query is None:
            raise ValueError("sparse search needs query text")
        return self


class SearchHit(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    dense_score: float | None = None
    sparse_score: float | None = None


class SearchResponse(BaseModel):
    collection: str
    version: str
    mode: SearchMode = Field(
        description="The mode really used (hybrid falls back to sparse if the embedder is down)."
    )
    hits: list[SearchHit]
    degraded: list[str] = Field(default_factory=list, description="Parts that were down, e.g. ['embedder'].")
    took_ms: float


class CollectionSummary(BaseModel):
    name: str
    version: str | None
    documents: int
    status: Literal["ready", "refused", "failed"]
    detail: str | None = None
    embedding_model: str | None = None
    dimension: int | None = None
    index_type: str | None = None


class CollectionList(BaseModel):
    collections: list[CollectionSummary]


class CollectionDetail(CollectionSummary):
    manifest: dict[str, Any] | None = None


# --- documents: a collection's chunks grouped by document, with where each came from ---

DocumentOriginKind = Literal["kb", "upload"]
MAX_DOCUMENTS_PAGE = 200


class DocumentOrigin(BaseModel):
    """Where a document came from. A knowledge-base document names its knowledge base and which of
    its sources (``local:<path>`` or ``web:<urls>``); an upload names the API key, the principal
    (the key, or ``key/user`` when a trusted key acts for a user) and the ingest job. Documents
    indexed before origins were recorded have only ``kind``."""

    kind: DocumentOriginKind
    kb: str | None = None
    source: str | None = Field(None, description="For a knowledge base: which of its sources.")
    key: str | None = None
    principal: str | None = None
    job_id: str | None = None


class DocumentSummary(BaseModel):
    id: str = Field(description="Stable, opaque, URL-safe: 16 hex digits derived from the source.")
    source: str
    title: str | None = None
    origin: DocumentOrigin
    chunks: int
    indexed_at: float | None = Field(
        None, description="Unix time of the run or upload that wrote it; null if indexed before it was kept."
    )


class DocumentList(BaseModel):
    data: list[DocumentSummary]
    next_cursor: str | None = Field(None, description="Pass as cursor for the next page; null on the last.")
    total: int = Field(description="Documents matching the query, over all pages.")
