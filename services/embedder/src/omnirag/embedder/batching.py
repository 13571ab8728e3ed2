"""Dynamic batching: one task owns a bounded queue and turns many small requests into few passes.

Requests put their texts in the queue with their token counts and wait on futures. The worker:
1. waits for work; when it was idle and less than a batch is queued, waits ``max_wait`` for more;
2. takes up to ``plan_batches`` passes' worth of queued texts, oldest first, skipping texts whose
   caller has gone (their futures are cancelled) so that no work is done for nobody;
3. groups them by kind (prompt, output), sorts each group by length and cuts passes so that
   texts x longest text stays within ``max_batch_tokens`` and texts within ``max_batch_size``;
4. runs only the pass that holds the oldest text, on a single inference thread (off the event
   loop), and resolves its futures; the other texts go back to the head of the queue, where the
   texts that arrive meanwhile join them in the next plan. Planning again before every pass makes
   passes fuller under load (each fixed pass cost is shared by more texts) and serves texts in order.
A full queue refuses new work at once (:class:`Overloaded` → 429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from omnirag.core.errors import NotReady, Overloaded

log = logging.getLogger("omnirag.embedder.batching")

# What one more forward pass costs besides its tokens (call overhead, kernel launches), in tokens,
# when the model does not measure it (EmbeddingModel.calibrate_pass_overhead does at start-up). On
# 2 CPU threads MiniLM spends 10-14 ms per pass before its first token, as much as ~100 tokens.
PASS_OVERHEAD_TOKENS = 96

RunPass = Callable[[Hashable, list[str]], Sequence[Any]]


@dataclass(eq=False)
class _Item:
    key: Hashable
    text: str
    tokens: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What the worker reports per pass; the service turns it into metrics."""

    size: int
    padded_tokens: int
    seconds: float


class BatchQueue:
    def __init__(
        self,
        run_pass: RunPass,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        plan_batches: int,
        max_wait: float,
        max_queue: int,
        pass_overhead_tokens: float = PASS_OVERHEAD_TOKENS,
        on_pass: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.run_pass = run_pass
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.plan_batches = plan_batches
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.pass_overhead_tokens = pass_overhead_tokens
        self._on_pass = on_pass or (lambda s: None)
        self._on_depth = on_depth or (lambda d: None)
        self._on_drop = on_drop or (lambda n: None)
        self._on_error = on_error or (lambda e: None)
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One thread: passes never overlap, and torch keeps its own intra-op threads busy.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnirag-infer")
        self._rate = 0.0  # texts per second, smoothed; sizes Retry-After

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(), name="omnirag-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady("the embedder is shutting down"))
        self._on_depth(0)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def retry_after(self) -> int:
        if self._rate <= 0:
            return 1
        return max(1, min(60, math.ceil(len(self._pending) / self._rate)))

    def submit(self, key: Hashable, texts: Sequence[str], tokens: Sequence[int]) -> list[asyncio.Future[Any]]:
        """Queue texts of one kind; the futures resolve to one result per text, in order."""
        if self._task is None:
            raise NotReady("the batching queue is not running")
        if len(self._pending) + len(texts) > self.max_queue:
            raise Overloaded(
                f"the embedding queue is full ({len(self._pending)} of {self.max_queue} texts waiting)",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for text, n in zip(texts, tokens, strict=True):
            fut: asyncio.Future[Any] = loop.create_future()
            self._pending.append(_Item(key, text, n, fut))
            futures.append(fut)
        self._on_depth(len(self._pending))
        self._wakeup.set()
        return futures

    def _take_plan(self) -> list[list[_Item]]:
        """Take the oldest live items worth ``plan_batches`` passes and cut them into passes."""
        cap_items = self.max_batch_size * self.plan_batches
        cap_tokens = self.max_batch_tokens * self.plan_batches
        taken: list[_Item] = []
        tokens = dropped = 0
        while self._pending and len(taken) < cap_items:
            item = self._pending[0]
            if item.future.done():  # cancelled: the caller has gone
                self._pending.popleft()
                dropped += 1
                continue
            if taken and tokens + item.tokens > cap_tokens:
                break
            self._pending.popleft()
            taken.append(item)
            tokens += item.tokens
        if dropped:
            self._on_drop(dropped)
        groups: dict[Hashable, list[_Item]] = {}
        for item in taken:
            groups.setdefault(item.key, []).append(item)
        passes: list[list[_Item]] = []
        for items in groups.values():
            items.sort(key=lambda it: it.tokens)
            passes.extend(self._cut(items))
        return passes

    def _next_pass(self) -> list[_Item]:
        """The pass that holds the oldest live text; the rest of the plan goes back, in order."""
        plan = self._take_plan()
        if not plan:
            return []
        oldest = min((it for batch in plan for it in batch), key=lambda it: it.enqueued)
        chosen = next(batch for batch in plan if any(it is oldest for it in batch))
        rest = sorted(
            (it for batch in plan if batch is not chosen for it in batch), key=lambda it: it.enqueued
        )
        self._pending.extendleft(reversed(rest))
        return chosen

    def _cut(self, items: list[_Item]) -> list[list[_Item]]:
        """Cut length-sorted items into passes of least total cost (padded tokens + a fixed cost
        per pass), within the size and token caps. A greedy cut would let 20 short questions ride
        with a 256-token passage and pad them all to 256; this dynamic programme does not."""
        n = len(items)
        best = [0.0] + [math.inf] * n
        cut_at = [0] * (n + 1)
        for end in range(1, n + 1):
            longest = items[end - 1].tokens  # sorted: the last item of a pass is its longest
            for start in range(end - 1, max(-1, end - 1 - self.max_batch_size), -1):
                size = end - start
                if size > 1 and size * longest > self.max_batch_tokens:
                    break
                cost = best[start] + size * longest + self.pass_overhead_tokens
                if cost < best[end]:
                    best[end], cut_at[end] = cost, start
        passes: list[list[_Item]] = []
        end = n
        while end > 0:
            passes.append(items[cut_at[end] : end])
            end = cut_at[end]
        passes.reverse()
        return passes

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        idle = True
        while True:
            if not self._pending:
                idle = True
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if idle and self.max_wait > 0 and len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.max_wait)
            idle = False
            live = self._next_pass()
            self._on_depth(len(self._pending))
            if live:
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(
                        self._executor, self.run_pass, live[0].key, [it.text for it in live]
                    )
                except Exception as exc:
                    log.exception("inference pass failed", extra={"texts": len(live)})
                    self._on_error(exc)
                    for it in live:
                        if not it.future.done():
                            it.future.set_exception(exc)
                    continue
                elapsed = time.perf_counter() - started
                for it, result in zip(live, results, strict=True):
                    if not it.future.done():
                        it.future.set_result(result)
                rate = len(live) / max(elapsed, 1e-6)
                self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
                self._on_pass(BatchStats(len(live), len(live) * max(it.tokens for it in live), elapsed))
