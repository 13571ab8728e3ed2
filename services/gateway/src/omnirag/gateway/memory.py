"""Chat history: long-term in Redis, short-term in a small in-process cache in front of it.

A session is a Redis list of JSON messages plus a revision counter. Every append pushes, trims to
the newest ``max_turns`` messages, bumps the revision and sets the TTL of both keys in one MULTI,
so no history key ever lives without a TTL. The cache holds (revision, messages); a read asks Redis
for the revision only and uses the cached list when it matches, so a replica that did not write the
last turn never serves a stale history.

Sessions live under the API key's name: one key's clients cannot read another key's sessions.

Key names: ``omnirag:session:<owner>:<id>`` holds the messages and ``omnirag:session-rev:<owner>:<id>``
the revision. The owner has no ':' and the two prefixes differ before it, so every (owner, id) the
API accepts has keys of its own. The first layout kept the revision at ``<messages key>:rev``, which
is also the messages key of the session whose id is ``<id>:rev``: the two corrupted each other. Such
a counter left from before the upgrade is moved to the new key the first time either session is
used, so sessions stored then are still read (until their TTL, as before).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from redis.asyncio import Redis

from omnirag.core.errors import InvalidInput, NotReady
from omnirag.gateway.replies import text

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
Message = dict[str, Any]

MESSAGES_PREFIX = "omnirag:session:"
REV_PREFIX = "omnirag:session-rev:"
LEGACY_REV_SUFFIX = ":rev"
# Seconds a client is asked to wait when Redis is unreachable: about a Redis restart or failover.
UNAVAILABLE_RETRY_AFTER = 5


class HistoryUnavailable(NotReady):
    """Redis, which holds the history, cannot be reached: 503 with Retry-After."""

    code = "history_unavailable"

    def __init__(self, message: str, *, retry_after: int = UNAVAILABLE_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def check_session_id(session_id: str) -> str:
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidInput(
            "session_id must be 1-128 characters of letters, digits, '_', '-', '.', ':'",
            code="invalid_session_id",
        )
    return session_id


class History:
    def __init__(self, redis: Redis, *, max_turns: int, ttl_seconds: int, cache_size: int) -> None:
        self.redis = redis
        self.max_turns = max_turns
        self.ttl = ttl_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, list[Message]]] = OrderedDict()

    @staticmethod
    def _keys(owner: str, session_id: str) -> tuple[str, str]:
        return f"{MESSAGES_PREFIX}{owner}:{session_id}", f"{REV_PREFIX}{owner}:{session_id}"

    async def _adopt_legacy_rev(self, owner: str, session_id: str) -> int:
        """Move a first-layout revision counter (``<messages key>:rev``) of this session to its
        revision key; return the revision (0 when there is none). A list there is the messages of
        the session ``<id>:rev`` under the new layout, not a counter: it is left alone."""
        key, rev_key = self._keys(owner, session_id)
        legacy = key + LEGACY_REV_SUFFIX
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(legacy)
            pipe.pttl(legacy)
            value, pttl = await pipe.execute(raise_on_error=False)
        if isinstance(value, Exception) or value is None or not text(value).isdigit():
            return 0
        rev = int(text(value))
        async with self.redis.pipeline(transaction=True) as pipe:
            if isinstance(pttl, int) and pttl > 0:
                pipe.set(rev_key, rev, nx=True, px=pttl)
            else:
                pipe.set(rev_key, rev, nx=True, ex=self.ttl)
            pipe.delete(legacy)
            pipe.get(rev_key)
            results = await pipe.execute()
        return int(results[-1] or 0)

    async def _clear_legacy_rev_at(self, owner: str, session_id: str) -> None:
        """For an id ending in ':rev': its messages key may still hold the first layout's counter
        of the session without the suffix (a string, where a list belongs); move it away first."""
        if not session_id.endswith(LEGACY_REV_SUFFIX):
            return
        key, _ = self._keys(owner, session_id)
        if text(await self.redis.type(key)) == "string":
            await self._adopt_legacy_rev(owner, session_id[: -len(LEGACY_REV_SUFFIX)])

    def _remember(self, key: str, rev: int, messages: list[Message]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = (rev, messages)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def load(self, owner: str, session_id: str) -> list[Message]:
        key, rev_key = self._keys(owner, session_id)
        rev = int(await self.redis.get(rev_key) or 0)
        if rev == 0:
            await self._clear_legacy_rev_at(owner, session_id)
            rev = await self._adopt_legacy_rev(owner, session_id)
        if rev == 0:
            self._cache.pop(key, None)
            return []
        cached = self._cache.get(key)
        if cached is not None and cached[0] == rev:
            self._cache.move_to_end(key)
            return list(cached[1])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.get(rev_key)
            raw, rev_now = await pipe.execute()
        messages = [json.loads(item) for item in raw]
        self._remember(key, int(rev_now or 0), messages)
        return list(messages)

    async def append(self, owner: str, session_id: str, messages: list[Message]) -> None:
        if not messages:
            return
        key, rev_key = self._keys(owner, session_id)
        await self._clear_legacy_rev_at(owner, session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *[json.dumps(m, ensure_ascii=False) for m in messages])
            pipe.ltrim(key, -self.max_turns, -1)
            pipe.expire(key, self.ttl)
            pipe.incr(rev_key)
            pipe.expire(rev_key, self.ttl)
            pipe.lrange(key, 0, -1)
            results = await pipe.execute()
        rev, raw = int(results[3]), results[5]
        # The list read in the same transaction is exactly the list at this revision.
        self._remember(key, rev, [json.loads(item) for item in raw])

    async def delete(self, owner: str, session_id: str) -> bool:
        key, rev_key = self._keys(owner, session_id)
        self._cache.pop(key, None)
        await self._clear_legacy_rev_at(owner, session_id)
        await self._adopt_legacy_rev(owner, session_id)
        return bool(await self.redis.delete(key, rev_key))

    async def ttl_of(self, owner: str, session_id: str) -> int:
        key, _ = self._keys(owner, session_id)
        return int(await self.redis.ttl(key))
