"""Chat history in a real Redis: appends trimmed with a TTL in one transaction, a cache that stays
correct when two gateway replicas serve one session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from omnirag_harness.gateway_stack import AUTH

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
        for key in ("omnirag:session:k:s1", "omnirag:session-rev:k:s1"):
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


def test_a_session_and_its_rev_namesake_do_not_corrupt_each_other(redis_url: str, gateway_url: str) -> None:
    """Under the first layout session "a" kept its revision at the messages key of session "a:rev":
    appending to one broke the other, and reading it was a 500."""

    async def scenario() -> None:
        r = aioredis.from_url(redis_url, decode_responses=True)
        h = History(r, max_turns=10, ttl_seconds=300, cache_size=0)
        for sid in ("a", "a:rev", "a:rev:rev"):
            await h.delete("dev", sid)
        await h.append("dev", "a", [{"role": "user", "content": "to a"}])
        await h.append("dev", "a:rev", [{"role": "user", "content": "to a:rev"}])
        await h.append("dev", "a", [{"role": "user", "content": "to a again"}])
        await h.append("dev", "a:rev:rev", [{"role": "user", "content": "to a:rev:rev"}])
        assert [m["content"] for m in await h.load("dev", "a")] == ["to a", "to a again"]
        assert [m["content"] for m in await h.load("dev", "a:rev")] == ["to a:rev"]
        assert [m["content"] for m in await h.load("dev", "a:rev:rev")] == ["to a:rev:rev"]
        await r.aclose()

    run(scenario())
    # The same through the API (the dev key's sessions live under its name, "dev").
    for sid, contents in (("a", ["to a", "to a again"]), ("a:rev", ["to a:rev"])):
        res = httpx.get(f"{gateway_url}/v1/sessions/{sid}", headers=AUTH, timeout=30)
        assert res.status_code == 200, res.text
        assert [m["content"] for m in res.json()["messages"]] == contents
    assert httpx.delete(f"{gateway_url}/v1/sessions/a:rev", headers=AUTH, timeout=30).json()["deleted"]
    assert httpx.get(f"{gateway_url}/v1/sessions/a", headers=AUTH, timeout=30).status_code == 200


def test_sessions_stored_under_the_first_layout_are_still_read(redis_url: str) -> None:
    async def scenario() -> None:
        r = aioredis.from_url(redis_url, decode_responses=True)
        h = History(r, max_turns=10, ttl_seconds=300, cache_size=8)
        await h.delete("k", "old")
        await h.delete("k", "old:rev")
        # What the first layout wrote: the messages, and the revision at "<messages key>:rev".
        await r.rpush("omnirag:session:k:old", '{"role": "user", "content": "before the upgrade"}')
        await r.expire("omnirag:session:k:old", 200)
        await r.set("omnirag:session:k:old:rev", 3, ex=200)
        # Its namesake is used first: the leftover counter makes way instead of breaking it.
        await h.append("k", "old:rev", [{"role": "user", "content": "namesake"}])
        assert [m["content"] for m in await h.load("k", "old:rev")] == ["namesake"]
        assert [m["content"] for m in await h.load("k", "old")] == ["before the upgrade"]
        assert 0 < await r.ttl("omnirag:session-rev:k:old") <= 200  # the counter moved, its TTL kept
        await h.append("k", "old", [{"role": "assistant", "content": "after"}])
        assert [m["content"] for m in await h.load("k", "old")] == ["before the upgrade", "after"]
        assert [m["content"] for m in await h.load("k", "old:rev")] == ["namesake"]
        # A first-layout session read before its namesake exists is moved too, and can be deleted.
        await r.rpush("omnirag:session:k:older", '{"role": "user", "content": "older"}')
        await r.set("omnirag:session:k:older:rev", 1, ex=200)
        assert await h.delete("k", "older") is True
        assert await r.exists("omnirag:session:k:older", "omnirag:session:k:older:rev") == 0
        await r.aclose()

    run(scenario())
