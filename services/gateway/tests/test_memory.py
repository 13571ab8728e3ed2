"""Chat history in a real Redis: appends trimmed with a TTL in one transaction, a cache that stays
correct when two gateway replicas serve one session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from omnirag.core.errors import InvalidInput
from omnirag.gateway.memory import History, check_session_id


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[aioredis.Redis]:
    yield aioredis.from_url(redis_url, decode_responses=True)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_append_trims_and_sets_ttl(redis_url: str) -> None:
    async def scenario() -> None:
        r = aioredis.from_url(redis_url, decode_responses=True)
        h = History(r, max_turns=4, ttl_seconds=300, cache_size=8)
        await h.delete("k", "s1")
        for i in range(3):
            await h.append(
                "k", "s1", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
            )
        msgs = await h.load("k", "s1")
        assert [m["content"] for m in msgs] == ["q1", "a1", "q2", "a2"]
        for key in ("omnirag:session:k:s1", "omnirag:session:k:s1:rev"):
            assert 0 < await r.ttl(key) <= 300
        await r.aclose()

    run(scenario())


def test_two_replicas_never_serve_a_stale_history(redis_url: str) -> None:
    async def scenario() -> None:
        r1 = aioredis.from_url(redis_url, decode_responses=True)
        r2 = aioredis.from_url(redis_url, decode_responses=True)
        a = History(r1, max_turns=10, ttl_seconds=300, cache_size=8)
        b = History(r2, max_turns=10, ttl_seconds=300, cache_size=8)
        await a.delete("k", "shared")
        await a.append("k", "shared", [{"role": "user", "content": "first"}])
        assert [m["content"] for m in await b.load("k", "shared")] == ["first"]  # b caches it
        await a.append("k", "shared", [{"role": "user", "content": "second"}])
        assert [m["content"] for m in await b.load("k", "shared")] == ["first", "second"]
        await b.delete("k", "shared")
        assert await a.load("k", "shared") == []
        await r1.aclose()
        await r2.aclose()

    run(scenario())


def test_sessions_are_scoped_to_the_key(redis_url: str) -> None:
    async def scenario() -> None:
        r = aioredis.from_url(redis_url, decode_responses=True)
        h = History(r, max_turns=10, ttl_seconds=300, cache_size=0)
        await h.append("alice", "same-id", [{"role": "user", "content": "secret"}])
        assert await h.load("bob", "same-id") == []
        await h.delete("alice", "same-id")
        await r.aclose()

    run(scenario())


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "../etc", "id\n"])
def test_bad_session_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_session_id(bad)
