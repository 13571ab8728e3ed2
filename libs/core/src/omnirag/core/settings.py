"""The settings base every service extends with its own env prefix."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Fields every service has. A subclass sets ``env_prefix`` (e.g. ``EMBEDDER_``) and a port.

    Values come from the environment first, then from ``.env`` in the working directory, so a
    laptop keeps its secrets in ``.env`` and a pod gets them from its environment.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    host: str = Field(
        "127.0.0.1",
        description="Interface to bind. 127.0.0.1 keeps a laptop's service private; containers set 0.0.0.0.",
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Root log level. DEBUG logs every request; INFO logs slow and failed ones."
    )
    log_json: bool = Field(
        True,
        description="JSON lines (one object a line, for log collectors) or plain text for reading by eye.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger bodies get 413 before they are read whole.",
    )
    slow_request_seconds: float = Field(
        1.0, ge=0, description="Requests slower than this are logged at INFO even when they succeed."
    )
