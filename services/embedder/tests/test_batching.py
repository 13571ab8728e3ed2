"""BatchQueue's planning, driven by a recording pass function: a mechanism test (exact batching
order), not a stand-in for the model, which the service tests use for real."""

from __future__ import annotations

import asyncio
import threading

import pytest

from omnirag.core.errors import NotReady, Overloaded
from omnirag.embedder.batching import BatchQueue, BatchStats


class Recorder:
    def __init__(self) -> None:
        self.passes: list[tuple[object, list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key, texts):
        self.gate.wait(10)
        self.passes.append((key, list(texts)))
        return [f"{key}:{t}" for t in texts]


def make_queue(rec: Recorder, **kw) -> tuple[BatchQueue, list[BatchStats], list[int]]:
    stats: list[BatchStats] = []
    drops: list[int] = []
    args = {
        "max_batch_size": 4,
        "max_batch_tokens": 100,
        "plan_batches": 4,
        "max_wait": 0.01,
        "max_queue": 64,
    } | kw
    q = BatchQueue(rec, on_pass=stats.append, on_drop=drops.append, **args)
    return q, stats, drops


async def test_concurrent_submits_merge_and_results_come_back_in_order():
    rec = Recorder()
    q, stats, _ = make_queue(rec)
    q.start()
    try:
        futs = [q.submit("k", [f"t{i}"], [5]) for i in range(4)]
        results = [await asyncio.gather(*f) for f in futs]
        assert results == [[f"k:t{i}"] for i in range(4)]
        assert len(rec.passes) == 1 and sorted(rec.passes[0][1]) == ["t0", "t1", "t2", "t3"]
        assert stats[0].size == 4 and stats[0].padded_tokens == 20
    finally:
        await q.stop()


async def test_passes_are_cut_by_size_and_by_padded_tokens_with_texts_sorted_by_length():
    rec = Recorder()
    rec.gate.clear()
    q, stats, _ = make_queue(rec, max_batch_size=3, max_batch_tokens=60)
    q.start()
    try:
        blocker = q.submit("k", ["blocker"], [1])
        await asyncio.sleep(0.05)  # the worker is now holding the blocker at the gate
        lengths = {"a": 40, "b": 5, "c": 6, "d": 30, "e": 7, "f": 8}
        futs = q.submit("k", list(lengths), list(lengths.values()))
        rec.gate.set()
        await asyncio.gather(*blocker, *futs)
        planned = [texts for _, texts in rec.passes[1:]]
        # Sorted: b5 c6 e7 | f8 d30 | a40 — three texts at most, and 2 x 30 fits 60 but 3 x 30 does not.
        # The pass holding the oldest text (a) goes first, then the one holding the oldest left (b).
        assert planned == [["a"], ["b", "c", "e"], ["f", "d"]]
        assert [s.padded_tokens for s in stats[1:]] == [40, 21, 60]
    finally:
        await q.stop()


async def test_texts_that_arrive_during_a_pass_join_the_rest_of_the_plan():
    loop = asyncio.get_running_loop()
    late: list[asyncio.Future] = []
    q: BatchQueue

    class ArrivesDuringPass(Recorder):
        def __call__(self, key, texts):
            if texts == ["long"]:  # another client's text lands while this pass runs
                done = threading.Event()

                def submit() -> None:
                    late.extend(q.submit("k", ["s3"], [5]))
                    done.set()

                loop.call_soon_threadsafe(submit)
                done.wait(5)
            return super().__call__(key, texts)

    rec = ArrivesDuringPass()
    rec.gate.clear()
    q, _, _ = make_queue(rec, max_batch_tokens=100)
    q.start()
    try:
        blocker = q.submit("k", ["blocker"], [1])
        await asyncio.sleep(0.05)
        first = q.submit("k", ["long", "s1", "s2"], [50, 5, 5])  # 3 x 50 > 100: two passes
        rec.gate.set()
        await asyncio.gather(*blocker, *first)
        await asyncio.gather(*late)
        # s1 and s2 waited for the next plan instead of running alone, and s3 rode with them.
        assert [texts for _, texts in rec.passes[1:]] == [["long"], ["s1", "s2", "s3"]]
    finally:
        await q.stop()


async def test_different_prompts_never_share_a_pass():
    rec = Recorder()
    rec.gate.clear()
    q, _, _ = make_queue(rec)
    q.start()
    try:
        blocker = q.submit(("s", None), ["x"], [1])
        await asyncio.sleep(0.05)
        a = q.submit(("s", "query: "), ["q1", "q2"], [3, 3])
        b = q.submit(("s", None), ["d1"], [3])
        rec.gate.set()
        await asyncio.gather(*blocker, *a, *b)
        assert {(k, tuple(t)) for k, t in rec.passes[1:]} == {
            (("s", "query: "), ("q1", "q2")),
            (("s", None), ("d1",)),
        }
    finally:
        await q.stop()


async def test_cancelled_work_is_skipped_and_counted():
    rec = Recorder()
    rec.gate.clear()
    q, _, drops = make_queue(rec)
    q.start()
    try:
        blocker = q.submit("k", ["x"], [1])
        await asyncio.sleep(0.05)
        gone = q.submit("k", ["gone1", "gone2"], [2, 2])
        kept = q.submit("k", ["kept"], [2])
        for f in gone:
            f.cancel()
        rec.gate.set()
        await asyncio.gather(*blocker, *kept)
        assert all("gone" not in t for _, texts in rec.passes for t in texts)
        assert sum(drops) == 2
    finally:
        await q.stop()


async def test_a_full_queue_refuses_with_retry_after_and_stop_fails_what_waits():
    rec = Recorder()
    rec.gate.clear()
    q, _, _ = make_queue(rec, max_queue=3)
    q.start()
    blocker = q.submit("k", ["x"], [1])
    await asyncio.sleep(0.05)
    waiting = q.submit("k", ["a", "b", "c"], [1, 1, 1])
    with pytest.raises(Overloaded) as err:
        q.submit("k", ["d"], [1])
    assert err.value.retry_after >= 1
    rec.gate.set()
    await asyncio.gather(*blocker)
    await q.stop()
    for f in waiting:
        if f.done() and not f.cancelled() and f.exception() is not None:
            assert isinstance(f.exception(), NotReady)
    with pytest.raises(NotReady):
        q.submit("k", ["late"], [1])


async def test_a_failing_pass_fails_only_its_own_requests():
    calls = []

    def flaky(key, texts):
        calls.append(list(texts))
        if "poison" in texts:
            raise RuntimeError("inference exploded")
        return texts

    errors: list[BaseException] = []
    q = BatchQueue(
        flaky,
        max_batch_size=1,
        max_batch_tokens=100,
        plan_batches=4,
        max_wait=0.01,
        max_queue=10,
        on_error=errors.append,
    )
    q.start()
    try:
        bad = q.submit("k", ["poison"], [1])
        good = q.submit("k", ["fine"], [1])
        assert await asyncio.gather(*good) == ["fine"]
        with pytest.raises(RuntimeError, match="exploded"):
            await asyncio.gather(*bad)
        assert len(errors) == 1
        assert await asyncio.gather(*q.submit("k", ["after"], [1])) == ["after"]  # the worker lives on
    finally:
        await q.stop()


async def test_short_texts_do_not_ride_with_a_long_one_even_when_the_budget_allows():
    rec = Recorder()
    rec.gate.clear()
    q, stats, _ = make_queue(rec, max_batch_size=32, max_batch_tokens=8192)
    q.start()
    try:
        blocker = q.submit("k", ["blocker"], [1])
        await asyncio.sleep(0.05)
        shorts = [f"s{i}" for i in range(20)]
        futs = q.submit("k", [*shorts, "passage"], [18] * 20 + [256])
        rec.gate.set()
        await asyncio.gather(*blocker, *futs)
        # 21 x 256 = 5376 padded tokens would fit the budget, but 20 x 18 + 256 costs far less.
        assert [sorted(t) for _, t in rec.passes[1:]] == [sorted(shorts), ["passage"]]
        assert [s.padded_tokens for s in stats[1:]] == [360, 256]
    finally:
        await q.stop()


async def test_the_price_of_a_pass_decides_between_padding_and_more_passes():
    """Texts of 10, 20 and 40 tokens: a cheap pass cuts three tight passes, a costly one rides them
    together in one pass padded to 40."""
    for overhead, expected in ((0.0, [["a"], ["b"], ["c"]]), (1000.0, [["a", "b", "c"]])):
        rec = Recorder()
        rec.gate.clear()
        q, _, _ = make_queue(rec, max_batch_size=32, max_batch_tokens=8192, pass_overhead_tokens=overhead)
        q.start()
        try:
            blocker = q.submit("k", ["blocker"], [1])
            await asyncio.sleep(0.05)
            futs = q.submit("k", ["a", "b", "c"], [10, 20, 40])
            rec.gate.set()
            await asyncio.gather(*blocker, *futs)
            assert [t for _, t in rec.passes[1:]] == expected
        finally:
            await q.stop()
