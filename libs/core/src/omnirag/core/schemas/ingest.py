"""On-demand ingestion: the gateway queues requests on a Redis stream, the indexer worker consumes
them. Both sides use these names and this message shape.

Only the indexer writes indexes, so deleting a document is a request on the same stream too
(``kind: "delete"``, naming the document by id); the gateway checks who may delete before queueing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from omnirag.core.names import CollectionName

INGEST_STREAM = "omnirag:ingest"
DEAD_LETTER_STREAM = "omnirag:ingest:dead"
CONSUMER_GROUP = "indexers"
JOB_TTL_SECONDS = 7 * 24 * 3600


def job_key(job_id: str) -> str:
    return f"omnirag:ingest:job:{job_id}"


class IngestRequest(BaseModel):
    job_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    collection: CollectionName
    kind: Literal["file", "text", "delete"]
    source: str = Field(
        min_length=1,
        max_length=1024,
        description="Stable name: the same principal ingesting it again replaces it. For a delete, "
        "the source of the document deleted (shown in the job's status).",
    )
    title: str | None = Field(None, max_length=1024)
    path: str | None = Field(None, description="For files: path relative to the shared uploads directory.")
    text: str | None = Field(None, max_length=10_000_000)
    attempts: int = Field(0, ge=0)
    # Who asked: recorded with every chunk of an upload, and who may delete it later.
    origin_key: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Name of the API key that asked."
    )
    origin_principal: str | None = Field(
        None,
        max_length=512,
        description="Who the upload belongs to: the key's name, or key/user when a trusted key acts "
        "for a user. An upload replaces only the same principal's upload of the same source.",
    )
    document: str | None = Field(
        None, pattern=r"^[0-9a-f]{16}$", description="For a delete: the id of the document to delete."
    )

    @model_validator(mode="after")
    def _payload(self) -> IngestRequest:
        if self.kind == "file" and not self.path:
            raise ValueError("a file request needs path")
        if self.kind == "text" and not self.text:
            raise ValueError("a text request needs text")
        if self.kind == "delete" and not self.document:
            raise ValueError("a delete request needs document")
        return self


JobStatus = Literal["queued", "running", "done", "failed", "dead"]
