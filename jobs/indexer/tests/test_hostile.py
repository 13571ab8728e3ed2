"""Hostile and broken uploads against the real worker process (``python -m omnirag.indexer worker``),
a real Redis and the real embedder: decompression bombs stay within the worker's memory budget,
files that can never be read are dead-lettered on their first attempt, a request that kills its
worker is dead-lettered after a few deaths, a worker outlives a Redis restart, and its /metrics
says what it did (jobs by outcome, dead letters, commits, compactions). Every hostile
file is built here; none is kept in the repository."""

from __future__ import annotations

import io
import struct
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from omnirag_harness.indexer import WorkerProcess
from omnirag_harness.processes import RedisProcess
from omnirag_harness.servers import free_port, metric_value

from omnirag.core.schemas.ingest import CONSUMER_GROUP, DEAD_LETTER_STREAM, INGEST_STREAM, job_key
from omnirag.indexer.worker import read_beat

MiB = 1024 * 1024
#: What one hostile upload may add to the worker's peak resident memory. The bombs below decode to
#: 1 GiB (DOCX) and 507 MB (PNG, then several RGB copies): a worker that opens them blows far past.
BOMB_BUDGET = 256 * MiB


# ------------------------------------------------------------------------------- hostile files


def png_bomb(path: Path, side: int = 13000) -> Path:
    """A valid PNG of side x side white RGB pixels: about 200 KB that decode to 507 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * (side * 3)  # filter byte "none", then the row
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def docx_bomb(path: Path, media_bytes: int = 1024 * MiB) -> Path:
    """A real DOCX (python-docx) whose picture, named by the document's relationships, is replaced
    by ``media_bytes`` of zeros: about 1 MB on disk per GiB unpacked."""
    import docx
    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(picture, "PNG")
    document = docx.Document()
    document.add_paragraph("A harmless looking memo about the quarterly picnic.")
    document.add_picture(io.BytesIO(picture.getvalue()))
    original = io.BytesIO()
    document.save(original)
    zero = bytes(MiB)
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith("word/media/"):
                with dst.open(info.filename, "w", force_zip64=True) as out:
                    for _ in range(media_bytes // MiB):
                        out.write(zero)
            else:
                dst.writestr(info, src.read(info))
    return path


def corrupt_pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R" + b"\x00\xff garbage " * 200)
    return path


def blank_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (400, 200), "white").save(path)
    return path


# ------------------------------------------------------------------------------------ harness


@pytest.fixture
def r(redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def worker_env(tmp_path: Path, redis_url: str, embedder_url: str, **extra: str) -> dict[str, str]:
    return {
        "INDEXER_REDIS_URL": redis_url,
        "INDEXER_EMBEDDER_URL": embedder_url,
        "INDEXER_INDEX_ROOT": str(tmp_path / "index"),
        "INDEXER_UPLOADS_DIR": str(tmp_path / "uploads"),
        "INDEXER_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "INDEXER_HEARTBEAT_SECONDS": "0.2",
        "INDEXER_PRUNE_GRACE_SECONDS": "0",
        "INDEXER_LOG_LEVEL": "INFO",
        **extra,
    }


def job() -> str:
    return uuid.uuid4().hex


def upload(r: redis.Redis, uploads: Path, path: Path) -> str:
    """Queue ``path`` (already in ``uploads``) as the gateway does; returns the job id."""
    job_id = job()
    r.hset(job_key(job_id), mapping={"status": "queued"})
    r.xadd(
        INGEST_STREAM,
        {"job_id": job_id, "collection": "uploads", "kind": "file", "source": path.name, "path": path.name},
    )
    return job_id


def text_job(r: redis.Redis, text: str, source: str = "note") -> str:
    job_id = job()
    r.hset(job_key(job_id), mapping={"status": "queued"})
    r.xadd(
        INGEST_STREAM,
        {"job_id": job_id, "collection": "uploads", "kind": "text", "source": source, "text": text},
    )
    return job_id


def status(r: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(job_key(job_id)).items()}


def wait_for(
    what: str, predicate: Callable[[], bool], worker: WorkerProcess | None = None, limit: float = 180
) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if worker is not None and not worker.alive():
            raise AssertionError(f"the worker exited while waiting for {what}:\n{worker.log()[-3000:]}")
        if time.monotonic() > deadline:
            tail = worker.log()[-3000:] if worker is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.05)


def finished(r: redis.Redis, *jobs: str) -> Callable[[], bool]:
    return lambda: all(status(r, j).get("status") in {"done", "dead"} for j in jobs)


def beat(path: Path) -> dict | None:
    try:
        return read_beat(path)
    except (OSError, ValueError):
        return None


def dead_letters(r: redis.Redis) -> dict[str, dict[str, str]]:
    entries = r.xrange(DEAD_LETTER_STREAM)
    return {f[b"job_id"].decode(): {k.decode(): v.decode() for k, v in f.items()} for _, f in entries}


# -------------------------------------------------------------------------------------- tests


def test_decompression_bombs_are_refused_within_the_memory_budget(tmp_path, redis_url, embedder_url, r):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    good_md = uploads / "picnic.md"
    good_md.write_text("# Picnic\n\nThe quarterly picnic is at the quokka meadow.\n")
    bombs = {
        "docx": docx_bomb(uploads / "memo.docx"),
        "png": png_bomb(uploads / "scan.png"),
    }
    assert all(p.stat().st_size < 4 * MiB for p in bombs.values())
    with WorkerProcess(worker_env(tmp_path, redis_url, embedder_url), tmp_path) as worker:
        # A first, good upload loads what any job loads; the budget is counted from there.
        first = upload(r, uploads, good_md)
        wait_for("the first upload", finished(r, first), worker)
        assert status(r, first)["status"] == "done"
        baseline = worker.peak_rss()

        jobs = {kind: upload(r, uploads, path) for kind, path in bombs.items()}
        wait_for("the bombs", finished(r, *jobs.values()), worker)
        peak = worker.peak_rss()
        (uploads / "after.md").write_text("# After\n\nThe wombat review happens after the picnic.\n")
        after = upload(r, uploads, uploads / "after.md")
        wait_for("the next good upload", finished(r, after), worker)

    print(f"worker peak RSS: {baseline / MiB:.0f} MiB before the bombs, {peak / MiB:.0f} MiB after")
    assert peak - baseline <= BOMB_BUDGET, f"peak grew by {(peak - baseline) / MiB:.0f} MiB"
    docx, png = status(r, jobs["docx"]), status(r, jobs["png"])
    assert docx["status"] == "dead" and "decompression bomb" in docx["error"], docx
    assert png["status"] == "dead" and "13000x13000 pixels" in png["error"], png
    assert docx["attempts"] == png["attempts"] == "1"
    assert set(dead_letters(r)) == set(jobs.values())
    assert status(r, after)["status"] == "done"


def test_files_that_can_never_be_read_are_dead_lettered_on_the_first_attempt(
    tmp_path, redis_url, embedder_url, r
):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    broken = {"pdf": corrupt_pdf(uploads / "report.pdf"), "png": blank_png(uploads / "blank.png")}
    with WorkerProcess(worker_env(tmp_path, redis_url, embedder_url), tmp_path) as worker:
        jobs = {kind: upload(r, uploads, path) for kind, path in broken.items()}
        good = text_job(r, "The otter rota changes on Tuesdays.")
        wait_for("the broken files and the good one", finished(r, *jobs.values(), good), worker)
    pdf, png = status(r, jobs["pdf"]), status(r, jobs["png"])
    assert pdf["status"] == "dead" and "PDF" in pdf["error"], pdf
    assert png["status"] == "dead" and "no text found in image" in png["error"], png
    # One attempt each: never queued again.
    assert pdf["attempts"] == png["attempts"] == "1"
    assert set(dead_letters(r)) == set(jobs.values())
    assert status(r, good)["status"] == "done"


def big_text(chars: int) -> str:
    animals = ["wombat", "quokka", "ocelot", "platypus", "pangolin", "axolotl", "okapi", "tapir"]
    sentences = (
        f"Report {i}: the {animals[i % len(animals)]} in warehouse {i * 7 % 101} needs {i % 13} crates."
        for i in range(chars // 40)
    )
    return " ".join(sentences)[:chars]


def test_a_request_that_kills_its_worker_is_dead_lettered_after_the_allowed_deaths(
    tmp_path, redis_url, embedder_url, r
):
    (tmp_path / "uploads").mkdir()
    env = worker_env(
        tmp_path,
        redis_url,
        embedder_url,
        INDEXER_MAX_WORKER_DEATHS="2",
        INDEXER_CLAIM_IDLE_SECONDS="1",
        # The killed worker's collection lock expires this soon; the next worker waits it out.
        INDEXER_LOCK_TTL_SECONDS="5",
    )
    # Long enough to embed (thousands of chunks) that the worker is killed while it holds it.
    killer = text_job(r, big_text(2_000_000), source="huge")
    worker = WorkerProcess(env, tmp_path)
    for delivery in (1, 2):
        worker.start()
        try:
            wait_for(
                f"delivery {delivery}",
                lambda d=delivery: (
                    status(r, killer).get("status") == "running"
                    and status(r, killer).get("deliveries") == str(d)
                ),
                worker,
            )
        finally:
            worker.kill()  # as the OOM killer would, in the middle of the job
    worker.start()
    try:
        wait_for("the dead letter", finished(r, killer), worker)
        good = text_job(r, "The heron census is on Thursday.")
        wait_for("the next request", finished(r, good), worker)
    finally:
        worker.stop()
    st = status(r, killer)
    assert st["status"] == "dead" and "died 2 times" in st["error"], st
    assert st["deliveries"] == "3"
    assert dead_letters(r)[killer]["deliveries"] == "3"
    assert status(r, good)["status"] == "done"


def test_sigterm_lets_the_worker_finish_the_request_in_hand(tmp_path, redis_url, embedder_url, r):
    """A rolling update sends SIGTERM: the request in hand is finished and acknowledged, not left
    to be taken over and counted as a death."""
    (tmp_path / "uploads").mkdir()
    worker = WorkerProcess(worker_env(tmp_path, redis_url, embedder_url), tmp_path).start()
    try:
        long_job = text_job(r, big_text(100_000), source="long")
        wait_for("the job to start", lambda: status(r, long_job).get("status") == "running", worker)
        assert worker.proc is not None
        worker.proc.terminate()
        assert worker.proc.wait(timeout=300) == 0, worker.log()[-3000:]
    finally:
        worker.stop()
    assert status(r, long_job)["status"] == "done", status(r, long_job)
    assert r.xpending(INGEST_STREAM, CONSUMER_GROUP)["pending"] == 0


def test_the_worker_waits_for_redis_not_ready_and_takes_the_next_job_when_it_is_back(tmp_path, embedder_url):
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    (tmp_path / "uploads").mkdir()
    url = f"redis://127.0.0.1:{port}/0"
    heartbeat = tmp_path / "heartbeat"
    env = worker_env(tmp_path, url, embedder_url, INDEXER_REDIS_RETRY_MAX_SECONDS="1")
    worker = WorkerProcess(env, tmp_path)
    try:
        with RedisProcess(data, port=port, appendonly=True):
            worker.start()
            client = redis.Redis.from_url(url)
            first = text_job(client, "The lynx audit is in March.", source="first")
            wait_for("the first job", finished(client, first), worker)
            wait_for("a ready heartbeat", lambda: (beat(heartbeat) or {}).get("redis") is True, worker)
            client.close()
        down_at = time.time()
        wait_for(
            "a heartbeat that says Redis is down",
            lambda: (b := beat(heartbeat)) is not None and b["at"] > down_at and b["redis"] is False,
            worker,
        )
        # Alive, and still beating (a liveness probe must not restart it), for a few more beats.
        seen = beat(heartbeat)
        assert seen is not None
        wait_for(
            "more beats", lambda: (b := beat(heartbeat)) is not None and b["at"] > seen["at"] + 0.5, worker
        )
        assert worker.alive() and (beat(heartbeat) or {}).get("redis") is False
        with RedisProcess(data, port=port, appendonly=True):
            client = redis.Redis.from_url(url)
            wait_for("a ready heartbeat again", lambda: (beat(heartbeat) or {}).get("redis") is True, worker)
            second = text_job(client, "The heron census is on Thursday.", source="second")
            wait_for("the job after the restart", finished(client, second), worker)
            assert status(client, second)["status"] == "done", status(client, second)
            assert worker.alive()
            client.close()
    finally:
        worker.stop()
    assert "Redis does not answer" in worker.log()


def scrape(worker: WorkerProcess) -> str:
    return worker.metrics()


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics page (labels in the order the metric declares them)."""
    return metric_value(text, name, ",".join(f'{k}="{v}"' for k, v in labels.items()))


def test_the_worker_says_on_its_metrics_what_it_did(tmp_path, redis_url, embedder_url, r):
    """What an operator's Prometheus reads from the real worker process: jobs by outcome, dead
    letters, the queue, seconds per stage, commits, and the compaction the commits set off."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    broken = corrupt_pdf(uploads / "report.pdf")
    env = worker_env(
        tmp_path,
        redis_url,
        embedder_url,
        # Two one-document segments fill a tier: the worker merges them in the background.
        INDEXER_COMPACTION_FANOUT="2",
        INDEXER_METRICS_REFRESH_SECONDS="0.1",
    )
    with WorkerProcess(env, tmp_path) as worker:
        before = scrape(worker)
        assert sample(before, "omnirag_indexer_jobs_total", kind="text", outcome="done") == 0
        texts = [
            text_job(r, f"The {animal} rota changes on {day}.", source=f"{animal}.txt")
            for animal, day in [("otter", "Tuesdays"), ("quokka", "Fridays"), ("wombat", "Sundays")]
        ]
        dead = upload(r, uploads, broken)
        wait_for("the jobs", finished(r, *texts, dead), worker)

        def merged() -> bool:
            runs = "omnirag_indexer_compactions_total"
            return sample(scrape(worker), runs, collection="uploads", outcome="merged") >= 1

        wait_for("a compaction", merged, worker, limit=120)
        wait_for("the queue's gauges", lambda: sample(scrape(worker), "omnirag_indexer_dead_letters") == 1)
        after = scrape(worker)

    assert sample(after, "omnirag_indexer_jobs_total", kind="text", outcome="done") == 3
    assert sample(after, "omnirag_indexer_jobs_total", kind="file", outcome="dead") == 1
    assert sample(after, "omnirag_indexer_job_seconds_count", kind="text") == 3
    # Each text was embedded and published as its own commit (its own segment).
    assert sample(after, "omnirag_indexer_commit_seconds_count", collection="uploads") == 3
    assert sample(after, "omnirag_indexer_commit_seconds_sum", collection="uploads") > 0
    assert sample(after, "omnirag_indexer_stage_seconds_count", stage="embed") == 3
    assert sample(after, "omnirag_indexer_stage_seconds_count", stage="publish") == 3
    # The PDF was read (and refused) too.
    assert sample(after, "omnirag_indexer_stage_seconds_count", stage="load") == 4
    assert sample(after, "omnirag_indexer_chunks_embedded_total") == 3
    assert sample(after, "omnirag_indexer_request_bytes_count") == 3
    assert sample(after, "omnirag_indexer_compaction_seconds_count", collection="uploads") >= 1
    assert sample(after, "omnirag_indexer_compacted_chunks_total", collection="uploads") >= 2
    # Nothing waits; the dead letter is counted; Redis answers.
    assert sample(after, "omnirag_indexer_queue_depth") == 0
    assert sample(after, "omnirag_indexer_queue_oldest_age_seconds") == 0
    assert sample(after, "omnirag_indexer_redis_up") == 1
    # The worker ran compaction on the same collection's own segments and kept serving.
    assert r.xlen(DEAD_LETTER_STREAM) == 1
