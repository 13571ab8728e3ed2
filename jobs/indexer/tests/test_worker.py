"""The ingest worker against a real Redis: requests become searchable, poison goes to the
dead-letter stream without blocking the next request, failures are retried."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from omnirag.core.schemas.ingest import CONSUMER_GROUP, DEAD_LETTER_STREAM, INGEST_STREAM, job_key
from omnirag.index import open_current
from omnirag.indexer.worker import Worker, read_beat


def job() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def redis(redis_url):
    r = aioredis.from_url(redis_url)
    await r.flushdb()
    yield r
    await r.aclose()


async def run_until(worker: Worker, predicate, limit: float = 60.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(limit):
            while not await predicate():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def status(r, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await r.hgetall(job_key(job_id))).items()}


async def test_text_and_file_requests_become_searchable(settings, redis_url, redis):
    settings.redis_url = redis_url
    settings.uploads_dir.mkdir(parents=True)
    (settings.uploads_dir / "abc123.md").write_text(
        "# Parking\n\nVisitors park in the wombatlot behind building C.\n"
    )
    text_job, file_job = job(), job()
    await redis.xadd(
        INGEST_STREAM,
        {
            "job_id": text_job,
            "collection": "uploads",
            "kind": "text",
            "source": "note-1",
            "title": "Cafeteria",
            "text": "The cafeteria serves platypus pie on Fridays.",
        },
    )
    await redis.xadd(
        INGEST_STREAM,
        {
            "job_id": file_job,
            "collection": "uploads",
            "kind": "file",
            "source": "parking.md",
            "path": "abc123.md",
        },
    )
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=200)
    try:

        async def both_done():
            return (await status(redis, text_job)).get("status") == "done" and (
                await status(redis, file_job)
            ).get("status") == "done"

        await run_until(worker, both_done)
    finally:
        await worker.close()
    coll = open_current(settings.index_root, "uploads")
    assert coll is not None
    assert coll.search(query="platypus pie", k=1, mode="sparse")[0].metadata["source"] == "note-1"
    assert coll.search(query="wombatlot parking", k=1, mode="sparse")[0].metadata["title"] == "Parking"
    st = await status(redis, file_job)
    assert st["version"] == coll.version or st["version"]
    # Acknowledged: nothing left pending in the group.
    pending = await redis.xpending(INGEST_STREAM, CONSUMER_GROUP)
    assert pending["pending"] == 0
    # The index holds the text now; the upload itself is gone from the volume.
    assert not (settings.uploads_dir / "abc123.md").exists()


async def test_keep_uploads_leaves_the_file(settings, redis_url, redis):
    settings.redis_url = redis_url
    settings.keep_uploads = True
    settings.uploads_dir.mkdir(parents=True)
    (settings.uploads_dir / "kept.md").write_text("# Kept\n\nThe quokka manual stays on disk.\n")
    file_job = job()
    await redis.xadd(
        INGEST_STREAM,
        {"job_id": file_job, "collection": "uploads", "kind": "file", "source": "kept.md", "path": "kept.md"},
    )
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=200)
    try:

        async def done():
            return (await status(redis, file_job)).get("status") == "done"

        await run_until(worker, done)
    finally:
        await worker.close()
    assert (settings.uploads_dir / "kept.md").exists()


async def test_poison_goes_to_dead_letter_without_blocking_the_next(settings, redis_url, redis):
    settings.redis_url = redis_url
    settings.uploads_dir.mkdir(parents=True)
    escape, malformed, good = job(), job(), job()
    await redis.xadd(
        INGEST_STREAM,
        {
            "job_id": escape,
            "collection": "uploads",
            "kind": "file",
            "source": "x",
            "path": "../../etc/passwd",
        },
    )
    await redis.xadd(
        INGEST_STREAM,
        {"job_id": malformed, "collection": "Not A Name", "kind": "text", "source": "x", "text": "t"},
    )
    await redis.xadd(
        INGEST_STREAM,
        {
            "job_id": good,
            "collection": "uploads",
            "kind": "text",
            "source": "ok",
            "text": "the ocelot report is due monday",
        },
    )
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=200)
    try:

        async def good_done():
            return (await status(redis, good)).get("status") == "done"

        await run_until(worker, good_done)
    finally:
        await worker.close()
    assert (await status(redis, escape))["status"] == "dead"
    assert "outside the uploads directory" in (await status(redis, escape))["error"]
    assert (await status(redis, malformed))["status"] == "dead"
    dead = await redis.xrange(DEAD_LETTER_STREAM)
    assert {fields[b"job_id"].decode() for _, fields in dead} == {escape, malformed}


async def test_failures_are_retried_then_dead_lettered(settings, redis_url, redis):
    settings.redis_url = redis_url
    settings.embedder_url = "http://127.0.0.1:9"  # nobody listens: every attempt fails
    settings.embed_timeout = 2.0
    settings.uploads_dir.mkdir(parents=True)
    failing = job()
    await redis.xadd(
        INGEST_STREAM,
        {"job_id": failing, "collection": "uploads", "kind": "text", "source": "s", "text": "never indexed"},
    )
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=200, max_attempts=2)
    try:

        async def dead():
            return (await status(redis, failing)).get("status") == "dead"

        await run_until(worker, dead, limit=120)
    finally:
        await worker.close()
    st = await status(redis, failing)
    assert st["attempts"] == "2" and "embedder" in st["error"]
    assert len(await redis.xrange(DEAD_LETTER_STREAM)) == 1


async def test_the_heartbeat_file_is_rewritten_while_the_worker_runs_and_stops_with_it(
    settings, redis_url, redis, tmp_path
):
    settings.redis_url = redis_url
    settings.heartbeat_file = tmp_path / "heartbeat"
    settings.heartbeat_seconds = 0.05
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=50)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        beats: list[float] = []
        # Three beats 0.05 s apart; a deadline, not a count of polls: a busy CI machine may hold
        # the loop (or Redis's PING) for a while.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if settings.heartbeat_file.exists():
                beat = read_beat(settings.heartbeat_file)["at"]
                if not beats or beat != beats[-1]:
                    beats.append(beat)
            if len(beats) >= 3:
                break
        assert len(beats) >= 3, "the heartbeat was not rewritten while the worker ran"
        assert beats == sorted(beats) and time.time() - beats[-1] < 5
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await worker.close()
    last = settings.heartbeat_file.read_text()
    await asyncio.sleep(0.3)
    assert settings.heartbeat_file.read_text() == last, "a stopped worker kept beating"


async def test_a_worker_keeps_the_request_in_hand_past_the_claim_idle_time(settings, redis_url, redis):
    """The hold is renewed while the worker works: another worker asking for requests idle past
    claim_idle_seconds (one whose worker died) never takes one that is being worked on."""
    settings.redis_url = redis_url
    settings.claim_idle_seconds = 0.5
    long_job = job()
    text = " ".join(f"Entry {i}: the kestrel counted {i % 17} voles in field {i % 31}." for i in range(3000))
    await redis.xgroup_create(INGEST_STREAM, CONSUMER_GROUP, id="0", mkstream=True)  # for the thief
    await redis.xadd(
        INGEST_STREAM,
        {"job_id": long_job, "collection": "uploads", "kind": "text", "source": "long", "text": text},
    )
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=200)
    stolen: list[bytes] = []
    renewed_past_idle = False

    async def done_and_never_stolen():
        nonlocal renewed_past_idle
        claimed = await redis.xautoclaim(INGEST_STREAM, CONSUMER_GROUP, "thief", min_idle_time=500, count=1)
        stolen.extend(msg_id for msg_id, _ in claimed[1])
        st = await status(redis, long_job)
        if st.get("status") == "running" and time.time() - float(st["updated_at"]) > 1.5:
            renewed_past_idle = True  # held for three times the claim idle time, and not taken
        return st.get("status") == "done"

    try:
        await run_until(worker, done_and_never_stolen, limit=300)
    finally:
        await worker.close()
    assert not stolen, "a request in hand was taken by another worker"
    assert renewed_past_idle, "the job ended before the claim idle time could pass: make it longer"


async def test_the_worker_compacts_in_the_background_after_uploads(settings, redis_url, redis):
    """Each upload publishes a segment of its own; the worker then merges a full tier without
    holding up the next request, and every upload stays searchable (issue 17)."""
    settings.redis_url = redis_url
    settings.compaction_fanout = 3
    settings.compaction_min_segment = 100
    jobs = [job() for _ in range(6)]
    animals = ["ibis", "tapir", "dugong", "kinkajou", "numbat", "saola"]
    for job_id, animal in zip(jobs, animals, strict=True):
        await redis.xadd(
            INGEST_STREAM,
            {
                "job_id": job_id,
                "collection": "uploads",
                "kind": "text",
                "source": f"{animal}.txt",
                "title": animal,
                "text": f"Field notes about the {animal}.",
            },
        )
    worker = Worker(settings, uploads_dir=settings.uploads_dir, block_ms=200)

    async def compacted() -> bool:
        done = [(await status(redis, j)).get("status") for j in jobs]
        coll = open_current(settings.index_root, "uploads")
        return done == ["done"] * 6 and coll is not None and len(coll.segments) < 3

    try:
        await run_until(worker, compacted)
    finally:
        await worker.close()
    coll = open_current(settings.index_root, "uploads", verify=True)
    assert coll is not None and coll.count == 6
    for animal in animals:
        assert coll.search(query=animal, k=1, mode="sparse")[0].metadata["source"] == f"{animal}.txt"
