"""Model-download settings (env prefix ``MODEL_DOWNLOAD_``).

The hubs' own variable names work too (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_TOKEN_PATH``,
``MODELSCOPE_ENDPOINT``, ``MODELSCOPE_API_TOKEN``), so a pod set up for ``huggingface-cli`` needs
no new names; the ``MODEL_DOWNLOAD_`` name wins when both are set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from omnirag.core.files import TooLarge, read_capped
from omnirag.core.settings import ServiceSettings
from omnirag.model_download.errors import InvalidRequest

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://www.modelscope.cn"
MAX_TOKEN_BYTES = 4096

# scheme://host[:port][/path] — no user:password@ (it would end up in logs and in the marker).
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?$")


def check_endpoint(value: str) -> str:
    value = value.strip().rstrip("/")
    if "@" in value:
        # Not echoed: whatever precedes the @ is likely a password.
        raise ValueError("an endpoint URL must not carry credentials (user:password@); give a token file")
    if len(value) > 512 or not _ENDPOINT.match(value):
        raise ValueError(
            f"{value[:80]!r} is not an http(s) base URL like https://hf-mirror.com "
            "(no credentials, query or spaces)"
        )
    return value


class ModelDownloadSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODEL_DOWNLOAD_", env_file=".env", extra="ignore", populate_by_name=True
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level. INFO logs each file and a progress line every progress_seconds."
    )
    log_json: bool = Field(False, description="JSON log lines (set true in a cluster) or plain text.")
    spec: Path | None = Field(
        None, description="YAML/JSON file listing the models. Unset: the command line names one model."
    )
    root: Path = Field(
        Path("data/models"),
        description="Directory a model's relative `dir` is under (the models volume in a cluster).",
    )
    hf_endpoint: str = Field(
        HF_DEFAULT_ENDPOINT,
        validation_alias=AliasChoices("MODEL_DOWNLOAD_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Hugging Face Hub or a mirror of it, e.g. https://hf-mirror.com.",
    )
    modelscope_endpoint: str = Field(
        MODELSCOPE_DEFAULT_ENDPOINT,
        validation_alias=AliasChoices("MODEL_DOWNLOAD_MODELSCOPE_ENDPOINT", "MODELSCOPE_ENDPOINT"),
        description="ModelScope site: https://www.modelscope.cn or https://www.modelscope.ai.",
    )
    hf_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_DOWNLOAD_HF_TOKEN", "HF_TOKEN"),
        description="Hugging Face token for gated/private repos. Prefer hf_token_file (a mounted Secret).",
    )
    hf_token_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_DOWNLOAD_HF_TOKEN_FILE", "HF_TOKEN_PATH"),
        description="File holding the Hugging Face token; read at start, wins over hf_token.",
    )
    modelscope_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_DOWNLOAD_MODELSCOPE_TOKEN", "MODELSCOPE_API_TOKEN"),
        description="ModelScope access token for private repos. Prefer modelscope_token_file.",
    )
    modelscope_token_file: Path | None = Field(
        None,
        description="File holding the ModelScope token; read at start, wins over modelscope_token.",
    )
    workers: int = Field(
        4, ge=1, le=32, description="Files downloaded at once. More helps many small files, not one big one."
    )
    retries: int = Field(
        5,
        ge=0,
        le=50,
        description="Retries of a failed request (connection, timeout, 429, 5xx). The count restarts "
        "whenever a file makes progress, so a flaky link still finishes and a dead one fails fast.",
    )
    retry_backoff_seconds: float = Field(
        1.0, ge=0, le=60, description="First wait between retries; doubles each time, capped at 60 s."
    )
    connect_timeout: float = Field(10.0, gt=0, le=300, description="Seconds to open a connection.")
    read_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds without a byte before a transfer counts as stalled."
    )
    reserve_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Free space that must remain after the download; checked before the first byte.",
    )
    progress_seconds: float = Field(
        10.0, gt=0, le=3600, description="Seconds between progress log lines while a model downloads."
    )
    refresh: bool = Field(
        False,
        description="Ask the hub again even when the marker says the model is complete: a moved branch "
        "is then followed (changed files only). Off: a complete model is never re-checked, so a "
        "re-run needs no network and cannot change what vLLM serves.",
    )

    @field_validator("hf_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)

    def token_for(self, source: str) -> str | None:
        """The token for ``source`` ("huggingface" | "modelscope"): the file first, then the variable."""
        path, value = (
            (self.hf_token_file, self.hf_token)
            if source == "huggingface"
            else (self.modelscope_token_file, self.modelscope_token)
        )
        if path is not None:
            return read_token_file(path)
        if value is not None and value.get_secret_value().strip():
            return value.get_secret_value().strip()
        return None


def read_token_file(path: Path) -> str:
    """Read a token from a mounted secret. Errors name the file, never its content."""
    try:
        raw = read_capped(path, MAX_TOKEN_BYTES)
    except OSError as exc:
        raise InvalidRequest(
            f"token file {path}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    except TooLarge:
        raise InvalidRequest(f"token file {path}: larger than {MAX_TOKEN_BYTES} bytes, not a token") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidRequest(f"token file {path}: not ASCII text, not a token") from None
    if not token or any(c.isspace() for c in token):
        raise InvalidRequest(f"token file {path}: empty or holds more than one word")
    return token
