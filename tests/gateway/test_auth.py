"""API keys: hashed, compared in constant time, scoped to collections, limited per minute in Redis;
a trusted key (the UI's) acts for named users, whose sessions and limits are their own."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from omnirag.core.errors import BadRequest, Forbidden, Overloaded, Unauthorized
from omnirag.gateway.auth import KeyStore, RateLimiter, acting_for, bearer


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


def test_only_a_trusted_key_names_a_user_and_the_name_is_checked() -> None:
    keys = [
        {"name": "ui", "key": "ui-key-0123456789abcdef", "act_for_users": True},
        {"name": "team", "key": "team-key-0123456789abcd"},
    ]
    s = KeyStore.load(inline=json.dumps(keys), path=None, dev_key=None, default_rpm=1, default_tpm=1)
    ui, team = s.authenticate("ui-key-0123456789abcdef"), s.authenticate("team-key-0123456789abcd")
    assert acting_for(ui, None) is ui and ui.principal == "ui"
    alice = acting_for(ui, "a1b2c3d4~alice@example.com")
    assert alice.principal == "ui/a1b2c3d4~alice@example.com" and alice.collections == ui.collections
    with pytest.raises(BadRequest) as err:
        acting_for(team, "alice")
    assert err.value.code == "user_header_not_allowed"
    # ':' would make Redis key names ambiguous, '/' the principal; length is bounded.
    for bad in ["", "a:b", "a/b", "a b", "x" * 129, "é"]:
        with pytest.raises(BadRequest) as err:
            acting_for(ui, bad)
        assert err.value.code == "invalid_user"


def test_the_dev_key_acts_for_the_local_ui_user() -> None:
    s = KeyStore.load(inline=None, path=None, dev_key="dev-key-0123456789abcd", default_rpm=1, default_tpm=1)
    assert s.authenticate("dev-key-0123456789abcd").act_for_users


USER_KEYS = json.dumps(
    [
        {"name": "ui", "key": "ui-key-0123456789abcdef", "act_for_users": True, "rpm": 100},
        {"name": "ui-tiny", "key": "ui-tiny-key-0123456789ab", "act_for_users": True, "rpm": 2},
        {"name": "team", "key": "team-key-0123456789abcd"},
    ]
)


def _as(key: str, user: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    return headers | ({"X-OmniRAG-User": user} if user else {})


def test_sessions_and_limits_are_per_user_of_a_trusted_key(gateway_factory, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    ui, tiny, team = "ui-key-0123456789abcdef", "ui-tiny-key-0123456789ab", "team-key-0123456789abcd"
    turn = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "rag": False}
    with gateway_factory(api_keys=USER_KEYS) as base:
        r = httpx.post(
            base + "/v1/chat/completions",
            json=turn | {"session_id": "shared-id"},
            headers=_as(ui, "alice"),
            timeout=120,
        )
        assert r.status_code == 200, r.text
        # Stored under the key and the user…
        assert redis.Redis.from_url(redis_url).exists("omnirag:session:ui/alice:shared-id")
        assert httpx.get(base + "/v1/sessions/shared-id", headers=_as(ui, "alice")).status_code == 200
        # …so another user of the same key, and the key on its own, do not see it.
        assert httpx.get(base + "/v1/sessions/shared-id", headers=_as(ui, "bob")).status_code == 404
        assert httpx.get(base + "/v1/sessions/shared-id", headers=_as(ui)).status_code == 404
        r = httpx.delete(base + "/v1/sessions/shared-id", headers=_as(ui, "bob"))
        assert r.json()["deleted"] is False
        assert httpx.get(base + "/v1/sessions/shared-id", headers=_as(ui, "alice")).status_code == 200

        # A key that may not act for users is refused, not silently unscoped; bad names too.
        r = httpx.get(base + "/v1/sessions/shared-id", headers=_as(team, "alice"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "user_header_not_allowed"
        r = httpx.post(base + "/v1/chat/completions", json=turn, headers=_as(team, "alice"), timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "user_header_not_allowed"
        r = httpx.get(base + "/v1/models", headers=_as(ui, "alice:shared"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_user"

        # Each user has the key's budget of their own.
        for _ in range(2):
            assert httpx.get(base + "/v1/models", headers=_as(tiny, "carol")).status_code == 200
        r = httpx.get(base + "/v1/models", headers=_as(tiny, "carol"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert httpx.get(base + "/v1/models", headers=_as(tiny, "dave")).status_code == 200


def test_gateway_responses_forbid_framing_and_sniffing(gateway_url: str) -> None:
    for r in (httpx.get(gateway_url + "/healthz"), httpx.get(gateway_url + "/v1/models")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
