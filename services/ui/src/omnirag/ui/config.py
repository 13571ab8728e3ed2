"""UI settings (env prefix ``UI_``). ``config/.env.example`` documents every variable."""

from __future__ import annotations

from typing import Literal

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
    answer_mode: Literal["generate", "extract", "auto"] | None = Field(
        None,
        description="How answers are made, sent as answer_mode: generate (the model), extract (no LLM: "
        "the sources' best sentence, quoted), auto (the model, replaced by the quote when it fails the "
        "grounding check). Unset: the gateway's default (GATEWAY_ANSWER_MODE).",
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

    documents_page_size: int = Field(
        50, ge=1, le=200, description="Documents listed per page in the upload panel (and removed at once)."
    )
    documents_max_listed: int = Field(
        500, ge=1, le=5000, description="Most documents the panel holds after 'More'; bounds the page's size."
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

    # --- login: who is using the UI (the gateway then scopes and limits each user) ---
    auth: Literal["auto", "oidc", "local", "none"] = Field(
        "auto",
        description="How people log in. oidc: the operator's identity provider (oidc_* below); local: "
        "one user with local_password (make run); none: no login, everyone acts as the UI's key — only "
        "allowed on a loopback address. auto: oidc when oidc_issuer is set, else local when "
        "local_password is set, else none on loopback; anywhere else the UI refuses to start.",
    )
    public_url: str | None = Field(
        None,
        description="The URL browsers use for the UI (https://chat.example.com), to build the OIDC "
        "callback behind a proxy and to know the cookie travels only over HTTPS. Unset: taken from "
        "each request, which a proxy that rewrites Host or scheme gets wrong.",
    )
    oidc_issuer: str | None = Field(
        None, description="Issuer URL of the identity provider; discovery is <issuer>/.well-known/..."
    )
    oidc_discovery_url: str | None = Field(
        None, description="Discovery document URL when it is not under the issuer (rare)."
    )
    oidc_client_id: str | None = Field(None, description="Client id registered at the identity provider.")
    oidc_client_secret: SecretStr | None = Field(
        None,
        description="Client secret (UI_OIDC_CLIENT_SECRET_FILE in a cluster). Unset: a public client, "
        "protected by PKCE alone.",
    )
    oidc_scopes: str = Field(
        "openid email profile", description="Scopes asked for; add the one that carries groups if needed."
    )
    oidc_user_claim: str = Field(
        "sub",
        description="Claim that names the user to the gateway (scoped by the issuer). sub never changes; "
        "email or preferred_username read better in logs but can be reassigned to another person.",
    )
    oidc_groups_claim: str = Field("groups", description="Claim that lists the user's groups.")
    oidc_allowed_groups: list[str] = Field(
        default_factory=list, description="Only members of one of these groups may log in ([]: any)."
    )
    oidc_allowed_emails: list[str] = Field(
        default_factory=list,
        description="Only these verified emails (or domains, written @example.com) may log in ([]: any).",
    )
    local_password: SecretStr | None = Field(
        None,
        description="Password of the local single-user mode; make run writes a random one to .env and "
        "prints a login link. Anyone with it acts as local_user.",
    )
    local_user: str = Field(
        "local", pattern=r"^[A-Za-z0-9._@+=-]{1,64}$", description="Name of the local mode's one user."
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Key that signs the login cookie (UI_SESSION_SECRET_FILE in a cluster). Unset: a "
        "random one per process, so a restart logs everyone out and replicas do not share logins.",
    )
    session_max_age: int = Field(
        8 * 3600,
        ge=60,
        le=30 * 86400,
        description="Seconds a login lasts. Longer is fewer logins; shorter limits what a stolen cookie "
        "can do (logging out clears the browser's cookie, not a copy of it).",
    )
