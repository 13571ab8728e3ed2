"""One writer per collection at a time.

With Redis (``INDEXER_REDIS_URL``) the lock is a key set with NX and an expiry, renewed while the
run lives: it holds across pods sharing the index volume, and a run killed with SIGKILL frees it
within the expiry. Without Redis, an ``flock`` on a file beside the collection does the same on
one machine (the kernel drops it when the process dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from omnirag.core.errors import Conflict

# Renew or release only a lock we still hold (compare and act in one atomic script).
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class LockHeld(Conflict):
    code = "collection_locked"


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def redis_lock(url: str, name: str, *, ttl: float, wait: float) -> AsyncIterator[str]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    key = f"omnirag:indexer:lock:{name}"
    token = holder_id()
    ttl_ms = int(ttl * 1000)
    deadline = time.monotonic() + wait
    try:
        while not await client.set(key, token, nx=True, px=ttl_ms):
            if time.monotonic() >= deadline:
                raw = await client.get(key)
                holder = raw.decode() if isinstance(raw, bytes) else str(raw or "another run")
                raise LockHeld(
                    f"collection {name!r} is being indexed by {holder}; try again when it finishes"
                )
            await asyncio.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                await client.eval(_RENEW, 1, key, token, ttl_ms)

        renewer = asyncio.create_task(renew())
        try:
            yield token
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await client.eval(_RELEASE, 1, key, token)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def file_lock(root: Path, name: str, *, wait: float) -> AsyncIterator[str]:
    path = root / f".{name}.lock"
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    token = holder_id()
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another run"
                    raise LockHeld(
                        f"collection {name!r} is being indexed by {holder}; try again when it finishes"
                    ) from None
                await asyncio.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, token.encode())
        yield token
    finally:
        os.close(fd)  # closing drops the flock


def collection_lock(redis_url: str, root: Path, name: str, *, ttl: float, wait: float):  # type: ignore[no-untyped-def]
    if redis_url:
        return redis_lock(redis_url, name, ttl=ttl, wait=wait)
    return file_lock(root, name, wait=wait)
