"""UI settings (env prefix ``UI_``). ``config/.env.example`` documents every variable."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from omnirag.core.settings import ServiceSettings


class UiSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="UI_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    port: int = Field(7860, ge=1, le=65535)
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body (browser uploads included); above max_upload_bytes so an "
        "upload meets its own, clearer limit.",
    )

    # --- the gateway, reached only through its public API ---
    gateway_url: str = Field("http://127.0.0.1:8000", description="Base URL of the gateway (without /v1).")
    api_key: SecretStr | None = Field(
        None,
        # make run keeps the gateway's development key in .env; the UI uses it when given none.
        validation_alias=AliasChoices("UI_API_KEY", "GATEWAY_DEV_KEY"),
        description="Gateway API key the UI sends. Unset: GATEWAY_DEV_KEY (make run writes one to .env). "
        "Give the UI its own key (its collections and limits) in a cluster.",
    )
    request_timeout: float = Field(
        15.0, gt=0, description="Seconds a non-chat gateway call (collections, sessions, uploads) may take."
    )
    chat_timeout: float = Field(
        180.0,
        gt=0,
        description="Seconds one streamed answer may take in all; a slow model on a CPU needs more.",
    )
    max_tokens: int = Field(
        512, ge=1, le=32768, description="Answer tokens asked for (the gateway caps it at its own limit)."
    )
    top_k: int | None = Field(
        None, ge=1, le=100, description="Sources retrieved per question. Unset: the gateway's default."
    )
    default_collection: str = Field(
        "docs", description="Knowledge base selected at first when the key may read it."
    )

    # --- what a browser may send ---
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest document uploaded (the gateway has its own limit)."
    )
    max_image_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest image attached to a question (sent inline)."
    )
    max_files: int = Field(4, ge=1, le=32, description="Files attached to one message or one upload.")
    upload_types: list[str] = Field(
        default_factory=lambda: [".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx"],
        description="Document types offered for upload (images attached to a question go to the model).",
    )
    image_types: list[str] = Field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".webp", ".gif"],
        description="Image types attached to a question as image parts.",
    )

    # --- ingest jobs ---
    ingest_poll_seconds: float = Field(
        1.0, gt=0, description="How often an upload's job status is asked for while it is watched."
    )
    ingest_wait_seconds: float = Field(
        300.0,
        gt=0,
        description="How long an upload is watched before the UI stops waiting (the job goes on).",
    )

    # --- conversations kept in the browser ---
    max_conversations: int = Field(
        30,
        ge=1,
        le=500,
        description="Conversations listed per browser; the oldest are dropped from the list.",
    )
    browser_state_key: str = Field(
        "omnirag-ui", description="localStorage key under which the browser keeps its conversation ids."
    )
    browser_state_secret: SecretStr = Field(
        SecretStr("omnirag-ui-conversations"),
        description="Key Gradio scrambles that localStorage entry with. It reaches the browser, so it "
        "hides nothing from the user; keep it fixed so conversations survive a UI restart.",
    )
    concurrency: int = Field(
        16,
        ge=1,
        le=1024,
        description="Answers (and uploads) streamed at once across all users; more wait in Gradio's queue. "
        "The gateway and the LLM bound the real throughput.",
    )
    title: str = Field("omnirag", description="Page title.")
