"""Dynamic batching: one task owns a bounded queue and turns many small requests into few passes.

Requests put their texts in the queue with their token counts and wait on futures. The worker:
1. waits for work; when it was idle and less than a batch is queued, waits ``max_wait`` for more;
2. takes up to ``plan_batches`` passes' worth of queued texts, oldest first, skipping texts whose
   caller has gone (their futures are cancelled) so that no work is done for nobody;
3. groups them by kind (prompt, output), sorts each group by length and cuts passes so that
   texts x longest text stays within ``max_batch_tokens`` and texts within ``max_batch_size``; a kind
   marked ``solo`` gets one pass per text, so its results cannot depend on batch neighbours;
4. runs only the pass that holds the oldest text, on a single inference thread (off the event
   loop), and resolves its futures; the other texts go back to the head of the queue, where the
   texts that arrive meanwhile join them in the next plan. Planning again before every pass makes
   passes fuller under load (each fixed pass cost is shared by more texts) and serves texts in order.
Admission comes first and costs nothing (:meth:`BatchQueue.admit`, before the caller tokenizes): a
request is refused at once (:class:`Overloaded` → 429 with Retry-After) when its texts would overflow
the queue, counting texts still being tokenized by admitted callers, or when the texts ahead of it would
take longer than ``max_queue_wait`` at the queue's measured rate. An admitted request that still has not
started a pass when ``max_queue_wait`` is up is failed with the same 429 and its texts are dropped.
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


class Ticket:
    """One admitted request: its place held in the queue while it tokenizes, and its deadline to start.

    ``release`` gives the reserved places back (idempotent); :meth:`BatchQueue.submit` does it when
    the texts enter the queue, the caller when it fails before that. ``queue_seconds`` (admission to
    its first pass) and ``inference_seconds`` (the passes that computed its texts) are what the
    request waited and what it was computed in, for its answer's timing headers."""

    def __init__(self, queue: BatchQueue, inputs: int, deadline: float) -> None:
        self._queue: BatchQueue | None = queue
        self.inputs = inputs
        self.admitted = time.perf_counter()
        self.deadline = deadline  # on the event loop's clock
        self.started = False
        self.queue_seconds = 0.0
        self.inference_seconds = 0.0
        self.futures: list[asyncio.Future[Any]] = []
        self.timer: asyncio.TimerHandle | None = None

    def release(self) -> None:
        if self._queue is not None:
            self._queue._reserved -= self.inputs
            self._queue = None


@dataclass(eq=False)
class _Item:
    key: Hashable
    text: str
    tokens: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)
    ticket: Ticket | None = None


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
        max_queue_wait: float = math.inf,
        pass_overhead_tokens: float = PASS_OVERHEAD_TOKENS,
        on_pass: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_start: Callable[[float], None] | None = None,
        on_expire: Callable[[int], None] | None = None,
        solo: Callable[[Hashable], bool] | None = None,
    ) -> None:
        self.run_pass = run_pass
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.plan_batches = plan_batches
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_queue_wait = max_queue_wait
        self.pass_overhead_tokens = pass_overhead_tokens
        self._on_pass = on_pass or (lambda s: None)
        self._on_depth = on_depth or (lambda d: None)
        self._on_drop = on_drop or (lambda n: None)
        self._on_error = on_error or (lambda e: None)
        self._on_start = on_start or (lambda waited: None)
        self._on_expire = on_expire or (lambda n: None)
        self._solo = solo or (lambda key: False)  # kinds computed one text per pass (see _take_plan)
        self._pending: deque[_Item] = deque()
        self._reserved = 0  # places held by admitted requests that are still tokenizing
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One thread: passes never overlap, and torch keeps its own intra-op threads busy.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnirag-infer")
        self._rate = 0.0  # texts per second, smoothed; sizes Retry-After and admission
        self._recent_texts = 0.0  # smoothed texts per pass and seconds per pass: their ratio is the rate
        self._recent_seconds = 0.0

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

    @property
    def rate(self) -> float:
        """Texts per second the worker has been computing (smoothed over recent passes); 0 until known."""
        return self._rate

    def _ahead(self) -> int:
        return len(self._pending) + self._reserved

    def expected_wait(self) -> float:
        """Seconds before a request admitted now would start, at the measured rate (0 while unknown)."""
        return self._ahead() / self._rate if self._rate > 0 else 0.0

    def retry_after(self) -> int:
        """Seconds until the queue should admit again: until what is ahead fits in ``max_queue_wait``."""
        if self._rate <= 0:
            return 1
        drain = self._ahead() / self._rate
        if math.isfinite(self.max_queue_wait):
            drain -= self.max_queue_wait
        return max(1, min(60, math.ceil(drain)))

    def check(self, inputs: int) -> None:
        """Raise :class:`Overloaded` if ``inputs`` more texts cannot be admitted now (see :meth:`admit`)."""
        if self._task is None:
            raise NotReady("the batching queue is not running")
        ahead = self._ahead()
        if ahead + inputs > self.max_queue:
            raise Overloaded(
                f"the embedding queue is full ({ahead} of {self.max_queue} texts waiting"
                + (f"; this request has {inputs})" if inputs > 1 else ")"),
                retry_after=self.retry_after(),
            )
        wait = self.expected_wait()
        if wait > self.max_queue_wait:
            raise Overloaded(
                f"the embedding queue is busy: {ahead} texts ahead would take about {wait:.1f}s at "
                f"{self._rate:.0f} texts/s, more than the {self.max_queue_wait:g}s a request may wait",
                retry_after=self.retry_after(),
            )

    def admit(self, inputs: int) -> Ticket:
        """Hold places for ``inputs`` texts, or refuse at once. Called before tokenizing, so a refusal
        costs a comparison, not a tokenizer pass: under overload most requests are refused, and what
        refuses them must stay cheap."""
        self.check(inputs)
        self._reserved += inputs
        loop = asyncio.get_running_loop()
        return Ticket(self, inputs, loop.time() + self.max_queue_wait)

    def submit(
        self,
        key: Hashable,
        texts: Sequence[str],
        tokens: Sequence[int],
        ticket: Ticket | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Queue texts of one kind; the futures resolve to one result per text, in order.

        With the ``ticket`` from :meth:`admit` the places are already held and the request is failed
        with 429 if it has not started a pass by the ticket's deadline; without one, the queue bound is
        checked here."""
        if self._task is None:
            raise NotReady("the batching queue is not running")
        if ticket is not None:
            ticket.release()
        elif len(self._pending) + self._reserved + len(texts) > self.max_queue:
            raise Overloaded(
                f"the embedding queue is full ({len(self._pending)} of {self.max_queue} texts waiting)",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for text, n in zip(texts, tokens, strict=True):
            fut: asyncio.Future[Any] = loop.create_future()
            self._pending.append(_Item(key, text, n, fut, ticket=ticket))
            futures.append(fut)
        if ticket is not None and math.isfinite(ticket.deadline):
            ticket.futures = futures
            ticket.timer = loop.call_at(ticket.deadline, self._expire, ticket)
        self._on_depth(len(self._pending))
        self._wakeup.set()
        return futures

    def _expire(self, ticket: Ticket) -> None:
        """The ticket's deadline passed: if none of its texts has started, fail the request with 429 and
        take its texts out of the queue, so they neither run nor count against later requests."""
        if ticket.started:
            return
        self._pending = deque(it for it in self._pending if it.ticket is not ticket)
        self._on_depth(len(self._pending))
        error = Overloaded(
            f"the request waited {self.max_queue_wait:g}s in the embedding queue without starting "
            f"({len(self._pending)} texts waiting)",
            retry_after=self.retry_after(),
        )
        failed = 0
        for fut in ticket.futures:
            if not fut.done():
                fut.set_exception(error)
                failed += 1
        if failed:
            self._on_expire(failed)

    def _take_plan(self) -> list[list[_Item]]:
        """Take the oldest live items worth ``plan_batches`` passes and cut them into passes."""
        cap_items = self.max_batch_size * self.plan_batches
        cap_tokens = self.max_batch_tokens * self.plan_batches
        taken: list[_Item] = []
        tokens = dropped = 0
        while self._pending and len(taken) < cap_items:
            item = self._pending[0]
            if item.future.done():  # cancelled (the caller has gone) or expired (already answered 429)
                self._pending.popleft()
                if item.future.cancelled():
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
        for key, items in groups.items():
            if self._solo(key):
                passes.extend([it] for it in items)
                continue
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

    def _mark_started(self, live: list[_Item]) -> None:
        """A request whose first text enters a pass has started: its deadline no longer applies."""
        now = time.perf_counter()
        for it in live:
            ticket = it.ticket
            if ticket is not None and not ticket.started:
                ticket.started = True
                if ticket.timer is not None:
                    ticket.timer.cancel()
                ticket.queue_seconds = now - ticket.admitted
                self._on_start(ticket.queue_seconds)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        idle = True
        last_end: float | None = None  # end of the previous pass, while the worker has not idled since
        while True:
            if not self._pending:
                idle = True
                last_end = None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if idle and self.max_wait > 0 and len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.max_wait)
            idle = False
            live = self._next_pass()
            self._on_depth(len(self._pending))
            self._mark_started(live)
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
                ended = time.perf_counter()
                elapsed = ended - started
                # A pass counts once for each request with a text in it, however many it has there.
                for ticket in {it.ticket for it in live if it.ticket is not None}:
                    ticket.inference_seconds += elapsed
                for it, result in zip(live, results, strict=True):
                    if not it.future.done():
                        it.future.set_result(result)
                # The rate admission relies on is what the queue really drains at: measured from the end
                # of the previous pass when busy, so the time between passes (an event loop crowded with
                # requests, planning) counts, not just the forward pass.
                # Texts and seconds are smoothed apart and divided, not each pass's rate averaged: one pass
                # of 32 short questions must not outweigh a pass of 32 passages that took ten times as long.
                span = max(ended - (last_end if last_end is not None else started), 1e-6)
                last_end = ended
                if self._recent_seconds == 0:
                    self._recent_texts, self._recent_seconds = float(len(live)), span
                else:
                    self._recent_texts = 0.9 * self._recent_texts + 0.1 * len(live)
                    self._recent_seconds = 0.9 * self._recent_seconds + 0.1 * span
                self._rate = self._recent_texts / self._recent_seconds
                self._on_pass(BatchStats(len(live), len(live) * max(it.tokens for it in live), elapsed))
