"""The chat request: OpenAI's fields, which pass on to the model, and omnirag's options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omnirag.core.names import CollectionName

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
