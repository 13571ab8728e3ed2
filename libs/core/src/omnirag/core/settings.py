"""The settings base every service extends with its own env prefix."""

from __future__ import annotations

import os
import types
import typing
from typing import Any, Literal, Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from omnirag.core.files import TooLarge, read_capped

MAX_SETTING_FILE_BYTES = 64 * 1024
MIN_SERVICE_TOKEN_CHARS = 16


class SettingsFileError(ValueError):
    """A ``<VAR>_FILE`` that cannot be used: set twice, missing, unreadable or too large."""


class SecretSettingError(Exception):
    """A secret setting refused by a validator. Not a ValueError on purpose: pydantic wraps those in a
    ValidationError that prints the whole input, secrets included; this one propagates as it is."""


def _is_text(annotation: Any) -> bool:
    """str or SecretStr, optionally with None: the settings a file can hold (keys, URLs)."""
    if annotation in (str, SecretStr):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and args[0] in (str, SecretStr)
    return False


def _env_names(name: str, field: FieldInfo, prefix: str) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    if isinstance(alias, str):
        return [alias]
    return [(prefix + name).upper()]


def read_setting_file(var: str, path: str) -> str:
    """The value in the file named by ``var`` (one trailing newline dropped), or a clear error that
    names the variable and the path, never the content."""
    try:
        raw = read_capped(path, MAX_SETTING_FILE_BYTES)
    except OSError as exc:
        raise SettingsFileError(f"{var}={path}: cannot read it ({exc.strerror or exc})") from None
    except TooLarge:
        raise SettingsFileError(f"{var}={path}: larger than {MAX_SETTING_FILE_BYTES} bytes") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsFileError(f"{var}={path}: not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


class FileSettingsSource(PydanticBaseSettingsSource):
    """``<VAR>_FILE=/path`` for every text setting ``<VAR>`` (keys, URLs): the value is read from the
    file, as a mounted Kubernetes or Docker secret gives it, so secrets need not sit in the
    environment. Setting both ``<VAR>`` and ``<VAR>_FILE`` is an error. A setting that has its own
    ``*_file`` field (``GATEWAY_API_KEYS_FILE``) keeps that meaning. It comes before the
    environment's plain values so that, among a setting's aliases, the first one set wins whether
    it is given plain or as a file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        config = self.settings_cls.model_config
        prefix = str(config.get("env_prefix") or "")
        env = {k.upper(): v for k, v in os.environ.items()}
        fields = self.settings_cls.model_fields
        found: dict[str, Any] = {}
        for name, field in fields.items():
            if f"{name}_file" in fields or not _is_text(field.annotation):
                continue
            names = _env_names(name, field, prefix)
            # The key the env source uses too: the first alias, or the field's name.
            key = names[0] if field.validation_alias is not None else name
            for var in names:  # in the aliases' order: the first one set, plain or as a file, wins
                path = env.get(var.upper() + "_FILE")
                if var.upper() in env:
                    if path is not None:
                        raise SettingsFileError(f"set {var} or {var}_FILE, not both")
                    break
                if path is not None:
                    found[key] = read_setting_file(var + "_FILE", path)
                    break
        return found


def url_with_password(url: str, password: SecretStr | None, *, setting: str) -> str:
    """``url`` with ``password`` put in its user-info (``redis://:<pw>@host``), for a password kept
    in its own secret; a URL that carries a password already is refused, so there is one source."""
    if password is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise SecretSettingError(f"{setting} has a password already; give it in one place")
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password.get_secret_value(), safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class ServiceSettings(BaseSettings):
    """Fields every service has. A subclass sets ``env_prefix`` (e.g. ``EMBEDDER_``) and a port.

    Values come from the environment first, then from files named by ``<VAR>_FILE`` variables
    (text settings only, for secrets mounted as files), then from ``.env`` in the working directory,
    so a laptop keeps its secrets in ``.env`` and a pod gets them from its environment or its
    mounted secrets.
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
    service_token: SecretStr | None = Field(
        None,
        description="Shared token between the services: the embedder and the retriever require it as "
        "'Authorization: Bearer <token>' on every route but /healthz, /readyz and /metrics, and their "
        "callers (gateway, retriever, indexer) send it. Unset: no check, and the network (the chart's "
        "NetworkPolicies) is their only protection; set: one more secret to rotate on every service "
        "together. In a cluster give it as <PREFIX>SERVICE_TOKEN_FILE, a mounted secret.",
    )

    @model_validator(mode="after")
    def _token_strength(self) -> Self:
        # Empty is unset (a template's `EMBEDDER_SERVICE_TOKEN=` line); a short one is a mistake that
        # would let a guess through, so the service refuses to start with it.
        token = self.service_token
        if token is not None and not token.get_secret_value():
            self.service_token = None
        elif token is not None and len(token.get_secret_value()) < MIN_SERVICE_TOKEN_CHARS:
            raise SecretSettingError(f"service_token must be at least {MIN_SERVICE_TOKEN_CHARS} characters")
        return self

    def service_headers(self) -> dict[str, str]:
        """Headers a client of the embedder or retriever sends: the service token, when one is set."""
        if self.service_token is None:
            return {}
        return {"Authorization": f"Bearer {self.service_token.get_secret_value()}"}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = FileSettingsSource(settings_cls)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings


class RedisServiceSettings(ServiceSettings):
    """A service that talks to Redis: its URL, and a password that may live in its own secret."""

    redis_url: str = Field("", description="Redis URL (redis://[:password@]host:port/db).")
    redis_password: SecretStr | None = Field(
        None,
        description="Password put into redis_url, so the URL carries none; in a cluster give it as "
        "<PREFIX>REDIS_PASSWORD_FILE, a mounted secret.",
    )

    @model_validator(mode="after")
    def _password_into_url(self) -> Self:
        if self.redis_url:
            self.redis_url = url_with_password(self.redis_url, self.redis_password, setting="redis_url")
        return self
