"""The embedder's API: the OpenAI ``/v1/embeddings`` surface and the full ``/v1/embed`` surface.

Shared here because the retriever, the indexer and the gateway call the embedder with them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
OutputValue = Literal["sentence_embedding", "token_embeddings"]


def _as_text_list(value: Any, field: str) -> list[str]:
    """Accept a string or a list of strings; refuse empties and token-id input with a clear reason."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{field} must be a string or a list of strings")
    if not value:
        raise ValueError(f"{field} must not be empty")
    if any(isinstance(v, (int, list)) for v in value):
        raise ValueError(f"{field} holds token ids; this server tokenizes with its own model, so send text")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise ValueError(f"{field}[{i}] must be a string")
        if not v.strip():
            raise ValueError(f"{field}[{i}] is empty or only white space")
    return value


class EmbeddingsRequest(BaseModel):
    """OpenAI-compatible. ``input`` is kept as sent; :meth:`texts` gives the list."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[Any] = Field(description="A string or a list of strings.")
    model: str | None = Field(None, description="Served model name (see /v1/models). Optional.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Matryoshka truncation, re-normalized.")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        _as_text_list(value, "input")
        return value

    def texts(self) -> list[str]:
        return _as_text_list(self.input, "input")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """The seed's ``SentenceTransformer.encode`` surface. Batch size and pools are server settings."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[Any]
    normalize: bool = Field(
        False, description="L2-normalize (after truncate_dim), like normalize_embeddings."
    )
    precision: Precision = "float32"
    truncate_dim: int | None = Field(None, ge=1)
    prompt_name: str | None = Field(None, max_length=128)
    prompt: str | None = Field(None, max_length=4096)
    output_value: OutputValue = "sentence_embedding"

    @field_validator("inputs", mode="before")
    @classmethod
    def _check_inputs(cls, value: Any) -> Any:
        _as_text_list(value, "inputs")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> EmbedRequest:
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        if self.output_value == "token_embeddings" and self.precision != "float32":
            raise ValueError("token_embeddings are returned as float32 only")
        return self

    def texts(self) -> list[str]:
        return _as_text_list(self.inputs, "inputs")


class TokenEmbeddings(BaseModel):
    tokens: list[str]
    embeddings: list[list[float]]


class EmbedResponse(BaseModel):
    model: str
    dimension: int = Field(description="Length of each vector before bit packing.")
    precision: Precision
    normalized: bool
    embeddings: list[list[float]] | list[list[int]] | None = None
    token_embeddings: list[TokenEmbeddings] | None = None
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "omnirag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbedderInfo(BaseModel):
    model: str
    dimension: int
    max_seq_length: int
    languages: list[str]
    normalized: bool = Field(description="Whether vectors come L2-normalized from the model itself.")
    prompts: dict[str, str]
    precisions: list[str]
    max_inputs_per_request: int
    device: str
