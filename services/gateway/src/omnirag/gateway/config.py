"""Gateway settings (env prefix ``GATEWAY_``). ``config/.env.example`` documents every variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from omnirag.core.names import CollectionName
from omnirag.core.settings import RedisServiceSettings


class GatewaySettings(RedisServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body; above max_upload_bytes so an upload meets its own, clearer limit.",
    )

    # --- the services behind the gateway ---
    embedder_url: str = Field("http://127.0.0.1:8001", description="Base URL of the embedder service.")
    retriever_url: str = Field("http://127.0.0.1:8002", description="Base URL of the retriever service.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for chat history, rate limits, feedback and the ingest queue.",
    )
    upstream_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a call to the embedder or retriever may take before it counts as down.",
    )
    circuit_failures: int = Field(
        5,
        ge=0,
        le=1000,
        description="Consecutive failures or timeouts of the embedder or retriever after which its circuit "
        "opens: calls are refused at once (a chat answers degraded, the embeddings proxy 503) instead of "
        "each waiting upstream_timeout. Lower: a hung upstream costs fewer requests their timeout; too "
        "low and a brief blip cuts it off. 0 turns the breakers off.",
    )
    circuit_cooldown_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds an open circuit stays open before one probe call is let through (a success "
        "closes it). Shorter: a recovered upstream is used again sooner; each probe to a still-hung one "
        "costs its caller the timeout.",
    )
    redis_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds a Redis command may take; past it history counts as down for that request.",
    )

    # --- the LLM (anything that speaks the OpenAI chat API); without models / models_file, the one
    # model of these llm_* settings answers every request ---
    llm_base_url: str = Field(
        "http://127.0.0.1:6006/v1",
        description="OpenAI-compatible base URL: vLLM in the cluster, the local llama.cpp server, "
        "or a hosted API.",
    )
    llm_api_key: SecretStr = Field(
        SecretStr("not-needed"), description="Key sent to the LLM (vLLM and llama.cpp ignore it)."
    )
    llm_model: str = Field(
        "smollm2-135m-instruct", description="Model name sent to the LLM (vLLM's --served-model-name)."
    )
    llm_vision: bool = Field(
        False, description="The model takes image_url parts. Off: images are read by OCR and sent as text."
    )
    llm_audio: bool = Field(
        False, description="The model takes input_audio parts. Off: audio is refused with 400."
    )
    llm_tools: bool = Field(
        True,
        description="The model takes tools / tool_choice. Off: requests with tools are refused with 400.",
    )
    llm_max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens",
        description="Name under which the answer's token cap is sent: max_tokens (llama.cpp, vLLM, most "
        "servers) or max_completion_tokens (OpenAI's reasoning models).",
    )
    llm_timeout: float = Field(120.0, gt=0, description="Seconds one LLM call may take, streaming included.")
    models: str | None = Field(
        None,
        description='The chat models as JSON: [{"name", "base_url", "upstream_model", "api_key_file", '
        '"capabilities": ["text", "vision", "audio", "video", "tools", "reasoning"], "max_tokens_param", '
        '"thinking_off", "reasoning_budget"}]; a request\'s model picks one. Unset: one model from the '
        "GATEWAY_LLM_* settings. Prefer models_file in a cluster (inline keys end up in the environment).",
    )
    models_file: Path | None = Field(
        None, description="YAML or JSON file with the models, same shape as models (wins over it)."
    )
    default_model: str | None = Field(
        None,
        description="Model answering requests that name none (and take their parts). Unset: the first "
        "listed. A large model here makes every client that does not choose pay for it.",
    )
    rewrite_model: str | None = Field(
        None,
        description="Model that rewrites follow-ups into standalone questions. Unset: the default model. "
        "A small, fast, non-reasoning model cuts each follow-up's delay before retrieval; it must still "
        "follow the instruction well enough, or searches get worse.",
    )
    sse_keepalive_seconds: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="Seconds of silence in a streamed answer (waiting for the LLM's first token, or between "
        "tokens) after which an SSE comment (': keep-alive') is sent, so load balancers with a 30-60 s idle "
        "timeout do not cut the stream; OpenAI clients skip comments. Shorter: more bytes on a slow stream; "
        "longer than a proxy's idle timeout: the stream is cut. A first token slower than this commits the "
        "answer to 200, so a later LLM failure comes as an error event, not a 502. 0 turns it off.",
    )
    llm_connect_retries: int = Field(
        2, ge=0, le=5, description="Retries of an LLM call that failed before its first byte (never after)."
    )
    llm_temperature: float = Field(
        0.0,
        ge=0,
        le=2,
        description="Temperature of the RAG answer and the rewrite when the client sets none.",
    )

    # --- RAG ---
    default_collection: CollectionName = Field(
        "docs", description="Collection searched when a request names none."
    )
    default_top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved when a request sets no top_k.")
    max_top_k: int = Field(20, ge=1, le=100, description="Largest top_k a request may ask for.")
    relevance_threshold: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Chunks scoring below this (hybrid scores are 0..1) are dropped before the prompt. "
        "Higher: fewer off-topic sources; too high and real answers lose their context.",
    )
    retrieval_fail_closed: bool = Field(
        False,
        description="When the retriever is down: false answers without context and marks it degraded; "
        "true answers 503.",
    )
    answer_mode: Literal["generate", "extract", "auto"] = Field(
        "generate",
        description="How a RAG answer is made when the request sets no answer_mode. generate: the model "
        "answers (streamed live) and a grounding check reports whether it follows from its sources. "
        "extract: no LLM call, the sources' best sentence with its citation (instant, always true to "
        "its source, never more than a quote). auto: the model answers, and an answer that fails the "
        "check is replaced by the extractive one, saying so; a streamed answer is held until checked "
        "(keep-alive comments meanwhile), so its first word comes when the model's last does. auto "
        "suits a small local model; a strong one loses little with generate.",
    )
    rewrite_max_tokens: int = Field(64, ge=8, le=512, description="Tokens the rewrite step may generate.")
    context_max_chars: int = Field(
        6000,
        ge=500,
        description="Characters of retrieved text put in the prompt at most: an outer bound on the prompt's "
        "size (and the model's time to read it) whatever its window; within it the sources are budgeted "
        "in the model's tokens (context_tokens).",
    )
    context_tokens: int = Field(
        4096,
        ge=256,
        le=10_000_000,
        description="A model's context window in tokens when its entry gives none (context_tokens) and its "
        "server reports none (vLLM's /tokenize does). The sources get what is left of it after the "
        "answer's cap and the rest of the prompt. Larger than the real window: prompts the server refuses.",
    )
    answer_tokens: int = Field(
        256,
        ge=16,
        le=65536,
        description="Cap of an answer to a question asking for a fact, for models whose entry sets no "
        "answer_tokens (a client's max_tokens and max_tokens_cap cap it further; a reasoning model gets "
        "its reasoning_budget on top). Lower: quicker answers and shorter loops of a rambling model; too "
        "low and answers are cut off.",
    )
    answer_open_factor: float = Field(
        3.0,
        ge=1,
        le=16,
        description="An answer to a question asking for an explanation, steps, a list or a comparison (how "
        "do I…, why…, 如何…, 为什么…) gets this many times the answer_tokens.",
    )

    # --- memory ---
    history_max_turns: int = Field(
        20, ge=1, le=1000, description="Messages kept per session in Redis (older ones are trimmed)."
    )
    history_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="A session's history expires this long after its last turn."
    )
    history_prompt_turns: int = Field(
        6, ge=0, le=100, description="Most recent messages given to the rewrite and answer prompts."
    )
    session_cache_size: int = Field(
        1024, ge=0, description="Sessions cached in process in front of Redis (0 turns the cache off)."
    )

    # --- keys and limits ---
    auth_enabled: bool = Field(True, description="Require an API key on every route but health and metrics.")
    api_keys: str | None = Field(
        None,
        description='Keys as JSON: [{"name", "key_sha256" or "key", "collections": ["*"], "models": ["*"], '
        '"rpm", "tpm"}]. Prefer api_keys_file (a mounted secret) in a cluster.',
    )
    api_keys_file: Path | None = Field(
        None, description="YAML or JSON file with the keys, same shape as api_keys."
    )
    dev_key: SecretStr | None = Field(
        None, description="One extra key with every collection and the default limits (make run sets one)."
    )
    default_rpm: int = Field(
        600, ge=0, description="Requests per minute per key unless the key says (0: none)."
    )
    default_tpm: int = Field(
        200_000,
        ge=0,
        description="LLM tokens (prompt + completion) per minute per key unless the key says (0: none).",
    )

    # --- bounded inputs ---
    max_messages: int = Field(100, ge=1, description="Messages one request may carry.")
    max_message_chars: int = Field(32_000, ge=1, description="Characters of text in one message.")
    max_total_chars: int = Field(200_000, ge=1, description="Characters of text in one request.")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Bytes of one image (decoded).")
    max_images: int = Field(8, ge=0, description="Images in one request.")
    max_video_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Bytes of one video (a data: URL decoded, or fetched from its http(s) URL). Each is "
        "held in memory and re-sent to the model as base64: larger allows longer clips and costs more "
        "memory per request; keep it under max_body_bytes / 1.34 for data: URLs to fit at all.",
    )
    max_videos: int = Field(2, ge=0, description="Videos in one request (video_url parts; 0 refuses them).")
    max_tokens_cap: int = Field(
        1024, ge=1, description="Upper bound on max_tokens; a request asking for more gets this many."
    )
    image_fetch_timeout: float = Field(10.0, gt=0, description="Seconds to fetch an http(s) image URL.")
    image_fetch_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose private or loopback addresses image URLs may reach (none by default).",
    )

    # --- uploads ---
    uploads_dir: Path = Field(
        Path("data/uploads"), description="Shared directory the indexer worker reads uploaded files from."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest uploaded document.")
    max_queued_ingests: int = Field(
        1000,
        ge=1,
        description="Ingest jobs waiting for the indexer worker at most; beyond it uploads get 429 with "
        "Retry-After before their body is read, so a stopped worker cannot fill the uploads volume.",
    )
    upload_types: list[str] = Field(
        default_factory=lambda: [
            ".md",
            ".markdown",
            ".txt",
            ".html",
            ".htm",
            ".pdf",
            ".docx",
            ".png",
            ".jpg",
            ".jpeg",
        ],
        description="File extensions accepted for upload (the indexer's loaders read these).",
    )
