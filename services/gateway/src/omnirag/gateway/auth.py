"""API keys and their limits.

Keys are kept only as SHA-256 digests; a presented key is hashed and compared with every stored
digest in constant time, so neither the lookup nor the comparison leaks how much of a key matched.
Each key names the collections it may read and the chat models it may use (``"*"`` for all) and
its requests and tokens per minute, counted in Redis so that every gateway replica shares one
budget.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from redis.asyncio import Redis

from omnirag.core.errors import BadRequest, Forbidden, Overloaded, Unauthorized

log = logging.getLogger("omnirag.gateway.auth")


class KeySpec(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    key: str | None = Field(None, min_length=16, description="Plain key; hashed at load and then forgotten.")
    collections: list[str] = Field(default_factory=lambda: ["*"])
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        max_length=256,
        description="Chat models the key may use ('*': all); others answer 404 as if they did not exist.",
    )
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    admin: bool = Field(False, description="May read the admin view (internal URLs, validation details).")
    act_for_users: bool = Field(
        False, description="May name the end user it acts for (the UI's key), who is then scoped and limited."
    )

    @model_validator(mode="after")
    def _one_key(self) -> KeySpec:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of key and key_sha256")
        return self


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    collections: frozenset[str]
    rpm: int
    tpm: int
    admin: bool = False
    act_for_users: bool = False
    # The end user a trusted key (act_for_users) acts for; None for a key used directly.
    user: str | None = None
    models: frozenset[str] = frozenset({"*"})

    @property
    def principal(self) -> str:
        """Who owns what this request stores (sessions, uploads): the key, or the user it acts for."""
        return self.name if self.user is None else f"{self.name}/{self.user}"

    def may_read(self, collection: str) -> bool:
        return "*" in self.collections or collection in self.collections

    def may_use(self, model: str) -> bool:
        """Whether the key may use the chat model named ``model`` (a registry entry's name)."""
        return "*" in self.models or model in self.models

    def check_collection(self, collection: str) -> None:
        if not self.may_read(collection):
            raise Forbidden(
                f"this API key may not read the collection {collection!r}", code="collection_forbidden"
            )


# With auth off every caller is trusted alike, so naming a user is allowed: it only namespaces.
ANONYMOUS = ApiKey("anonymous", b"", frozenset({"*"}), 0, 0, act_for_users=True)

USER_HEADER = "X-OmniRAG-User"
# No ':' — the principal is part of Redis key names ("omnirag:session:<principal>:<session id>"), so
# a user id that could contain the separator would make two owners' keys collide. No '/' either:
# it separates the key's name from the user in the principal.
USER_ID = re.compile(r"^[A-Za-z0-9._@+=~-]{1,128}$")


def acting_for(key: ApiKey, user: str | None) -> ApiKey:
    """The key as it acts for ``user`` (the X-OmniRAG-User header), or as it is without one.

    Only a key trusted to act for users (``act_for_users``, the UI's) may name one; from any other
    key the header is refused rather than ignored, so a client never believes it is scoping by user
    when it is not."""
    if user is None:
        return key
    if not key.act_for_users:
        raise BadRequest(
            f"this API key may not act for users: drop the {USER_HEADER} header, or give the key "
            "act_for_users: true",
            code="user_header_not_allowed",
        )
    if not USER_ID.fullmatch(user):
        raise BadRequest(
            f"{USER_HEADER} must be 1-128 characters of letters, digits and . _ @ + = ~ -",
            code="invalid_user",
        )
    return replace(key, user=user)


@dataclass
class KeyStore:
    keys: list[ApiKey] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        *,
        inline: str | None,
        path: Path | None,
        dev_key: str | None,
        default_rpm: int,
        default_tpm: int,
    ) -> KeyStore:
        specs: list[KeySpec] = []
        raw: list[Any] = []
        if inline:
            raw.extend(_as_list(json.loads(inline), "GATEWAY_API_KEYS"))
        if path is not None:
            raw.extend(_as_list(yaml.safe_load(path.read_text(encoding="utf-8")), str(path)))
        for item in raw:
            try:
                specs.append(KeySpec.model_validate(item))
            except ValidationError as exc:
                # The message names the field, never the key's value.
                raise ValueError(f"bad API key entry: {exc.errors()[0]['msg']}") from None
        if dev_key:
            # make run's UI sends this key for whoever logged in to it, so it may name that user.
            specs.append(KeySpec(name="dev", key=dev_key, act_for_users=True))
        keys = []
        for s in specs:
            d = bytes.fromhex(s.key_sha256) if s.key_sha256 else digest(s.key or "")
            keys.append(
                ApiKey(
                    name=s.name,
                    digest=d,
                    collections=frozenset(s.collections),
                    rpm=default_rpm if s.rpm is None else s.rpm,
                    tpm=default_tpm if s.tpm is None else s.tpm,
                    admin=s.admin,
                    act_for_users=s.act_for_users,
                    models=frozenset(s.models),
                )
            )
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        return cls(keys)

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        d = digest(presented)
        found: ApiKey | None = None
        for key in self.keys:  # every digest is compared, match or not
            if hmac.compare_digest(d, key.digest):
                found = key
        if found is None:
            raise Unauthorized("invalid API key", code="invalid_api_key")
        return found


def _as_list(data: Any, where: str) -> list[Any]:
    if isinstance(data, dict) and "keys" in data:
        data = data["keys"]
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of keys")
    return data


def bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None


# One window per key and minute: INCRBY, then give the key its TTL in the same script.
_WINDOW_SCRIPT = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return v
"""


class RateLimiter:
    """Fixed one-minute windows in Redis: requests counted on arrival, tokens added once known."""

    def __init__(self, redis: Redis, *, on_limited: Callable[[str], object] | None = None) -> None:
        self.redis = redis
        self._script = redis.register_script(_WINDOW_SCRIPT)
        self._on_limited = on_limited or (lambda limit: None)

    @staticmethod
    def _window() -> tuple[int, int]:
        now = time.time()
        minute = int(now // 60)
        return minute, max(1, int(60 - (now - minute * 60)) + 1)

    def _key(self, key: ApiKey, what: str, minute: int) -> str:
        # Per principal: each user a trusted key acts for has the key's budget of their own, so
        # one busy user of the UI cannot spend everybody's.
        return f"omnirag:ratelimit:{key.principal}:{what}:{minute}"

    async def check(self, key: ApiKey) -> None:
        """Count one request; refuse it with 429 if the key is over either budget this minute."""
        if not key.rpm and not key.tpm:
            return
        minute, retry_after = self._window()
        if key.rpm:
            n = int(await self._script(keys=[self._key(key, "req", minute)], args=[1, 120]))
            if n > key.rpm:
                self._on_limited("rpm")
                raise Overloaded(
                    f"rate limit: {key.rpm} requests per minute for this key",
                    retry_after=retry_after,
                    code="rate_limited",
                )
        if key.tpm:
            used = int(await self.redis.get(self._key(key, "tok", minute)) or 0)
            if used >= key.tpm:
                self._on_limited("tpm")
                raise Overloaded(
                    f"rate limit: {key.tpm} tokens per minute for this key",
                    retry_after=retry_after,
                    code="rate_limited",
                )

    async def add_tokens(self, key: ApiKey, tokens: int) -> None:
        if not key.tpm or tokens <= 0:
            return
        minute, _ = self._window()
        await self._script(keys=[self._key(key, "tok", minute)], args=[int(tokens), 120])
