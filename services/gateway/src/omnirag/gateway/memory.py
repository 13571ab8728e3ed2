"""Chat history: long-term in Redis, short-term in a small in-process cache in front of it.

A session is a Redis list of JSON messages plus a revision counter. Every append pushes, trims to
the newest ``max_turns`` messages, bumps the revision and sets the TTL of both keys in one MULTI,
so no history key ever lives without a TTL. The cache holds (revision, messages); a read asks Redis
for the revision only and uses the cached list when it matches, so a replica that did not write the
last turn never serves a stale history.

Sessions live under the API key's name: one key's clients cannot read another key's sessions.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from omnirag.core.errors import InvalidInput

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
Message = dict[str, Any]


def check_session_id(session_id: str) -> str:
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidInput(
            "session_id must be 1-128 characters of letters, digits, '_', '-', '.', ':'",
            code="invalid_session_id",
        )
    return session_id


class History:
    def __init__(self, redis: Any, *, max_turns: int, ttl_seconds: int, cache_size: int) -> None:
        self.redis = redis
        self.max_turns = max_turns
        self.ttl = ttl_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, list[Message]]] = OrderedDict()

    @staticmethod
    def _keys(owner: str, session_id: str) -> tuple[str, str]:
        base = f"omnirag:session:{owner}:{session_id}"
        return base, base + ":rev"

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
        return bool(await self.redis.delete(key, rev_key))

    async def ttl_of(self, owner: str, session_id: str) -> int:
        key, _ = self._keys(owner, session_id)
        return int(await self.redis.ttl(key))
