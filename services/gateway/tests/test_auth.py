"""API keys: hashed, compared in constant time, scoped to collections, limited per minute in Redis."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
import redis.asyncio as aioredis

from omnirag.core.errors import Forbidden, Overloaded, Unauthorized
from omnirag.gateway.auth import KeyStore, RateLimiter, bearer


def store(**kw) -> KeyStore:  # type: ignore[no-untyped-def]
    keys = [
        {"name": "team-a", "key": "team-a-key-0123456789", "collections": ["docs"], "rpm": 3, "tpm": 100},
        {"name": "ops", "key_sha256": hashlib.sha256(b"ops-key-0123456789ab").hexdigest()},
    ]
    return KeyStore.load(
        inline=json.dumps(keys), path=None, dev_key=None, default_rpm=60, default_tpm=1000, **kw
    )


def test_keys_are_kept_hashed_and_matched() -> None:
    s = store()
    assert all(len(k.digest) == 32 for k in s.keys)
    assert "team-a-key-0123456789" not in repr(s)
    assert s.authenticate("team-a-key-0123456789").name == "team-a"
    assert s.authenticate("ops-key-0123456789ab").name == "ops"
    with pytest.raises(Unauthorized):
        s.authenticate("team-a-key-012345678")
    with pytest.raises(Unauthorized):
        s.authenticate(None)


def test_collection_scope() -> None:
    key = store().authenticate("team-a-key-0123456789")
    key.check_collection("docs")
    with pytest.raises(Forbidden):
        key.check_collection("hr")


def test_bad_key_entries_are_refused_without_echoing_the_key() -> None:
    with pytest.raises(ValueError) as err:
        KeyStore.load(
            inline='[{"name": "x", "key": "short"}]', path=None, dev_key=None, default_rpm=1, default_tpm=1
        )
    assert "short" not in str(err.value)


def test_key_files_in_yaml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "keys.yaml"
    f.write_text("keys:\n  - name: file-key\n    key: file-key-0123456789abc\n    collections: ['*']\n")
    s = KeyStore.load(inline=None, path=f, dev_key="dev-key-0123456789abcd", default_rpm=1, default_tpm=1)
    assert {k.name for k in s.keys} == {"file-key", "dev"}


def test_bearer_header() -> None:
    assert bearer("Bearer abc", None) == "abc"
    assert bearer("basic abc", "k") == "k"
    assert bearer(None, None) is None


def test_rate_limits_in_redis(redis_url: str) -> None:
    async def scenario() -> None:
        r = aioredis.from_url(redis_url, decode_responses=True)
        await r.flushdb()
        limiter = RateLimiter(r)
        key = store().authenticate("team-a-key-0123456789")
        for _ in range(3):
            await limiter.check(key)
        with pytest.raises(Overloaded) as err:
            await limiter.check(key)
        assert 1 <= err.value.retry_after <= 61
        other = store().authenticate("ops-key-0123456789ab")
        await limiter.check(other)  # budgets are per key
        await limiter.add_tokens(other, 1000)
        with pytest.raises(Overloaded):
            await limiter.check(other)  # tokens per minute spent
        keys = await r.keys("omnirag:ratelimit:*")
        ttls = [await r.ttl(k) for k in keys]
        assert ttls and all(0 < t <= 120 for t in ttls)
        await r.aclose()

    asyncio.run(scenario())
