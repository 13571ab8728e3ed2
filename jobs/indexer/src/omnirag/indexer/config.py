"""Indexer settings (env prefix ``INDEXER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from omnirag.core.settings import RedisServiceSettings


class IndexerSettings(RedisServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", env_file=".env", extra="ignore")

    # A CLI: people read its summary on stdout; logs on stderr only say what went wrong.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="Log level.")
    log_json: bool = Field(False, description="JSON log lines (set true in a cluster) or plain text.")
    index_root: Path = Field(Path("data/index"), description="Where collections are written.")
    config: Path = Field(Path("config/knowledge-bases.yaml"), description="The knowledge-base spec.")
    embedder_url: str = Field("http://127.0.0.1:8001", description="Base URL of the embedder service.")
    redis_url: str = Field(
        "",
        description="Redis for the per-collection write lock (across pods) and the ingest queue. Empty: "
        "a file lock beside the collection, which holds only on one machine.",
    )
    embed_batch_size: int = Field(64, ge=1, le=2048, description="Chunks per embedding request.")
    embed_concurrency: int = Field(
        2, ge=1, le=64, description="Embedding requests in flight; the embedder merges them into its batches."
    )
    embed_timeout: float = Field(300.0, gt=0, description="Seconds one embedding request may take.")
    faiss_gpu: bool = Field(
        False,
        description="Train and fill IVF-PQ indexes on every GPU (faiss.index_cpu_to_all_gpus), then write "
        "them from a CPU copy. Needs the GPU image (faiss-gpu-cu12) and a GPU, or the indexer refuses to "
        "start. Pays for large IVF-PQ collections (k-means and encoding); flat and HNSW build on the CPU.",
    )

    @field_validator("faiss_gpu")
    @classmethod
    def _gpu_present(cls, on: bool) -> bool:
        # At start-up, in one line, rather than after a whole run's embedding work at its commit.
        if on:
            from omnirag.index import dense  # faiss is loaded only to check this setting

            dense.require_gpus("INDEXER_FAISS_GPU=true")
        return on

    lock_ttl_seconds: float = Field(
        60.0,
        ge=5,
        description="Lock expiry; renewed while the run lives, so a killed run frees it this soon.",
    )
    lock_wait_seconds: float = Field(
        0.0, ge=0, description="How long to wait for another run's lock before failing."
    )
    keep_versions: int = Field(3, ge=1, description="Versions kept after a publish (CURRENT always kept).")
    prune_grace_seconds: float = Field(600.0, ge=0, description="Never prune a version younger than this.")
    compaction: bool = Field(
        True,
        description="Merge a collection's small segments after a publish (a tiered policy; the merge is "
        "built without the write lock, which is held only to swap it in).",
    )
    compaction_fanout: int = Field(10, ge=2, le=100, description="Segments of one size tier merged at once.")
    compaction_min_segment: int = Field(
        1000, ge=1, description="Chunks of the smallest tier: segments up to this size count as one tier."
    )
    uploads_dir: Path = Field(Path("data/uploads"), description="Where the gateway stores uploaded files.")
    heartbeat_file: Path | None = Field(
        None,
        description="The worker rewrites this file every heartbeat_seconds while its event loop runs, "
        'as {"at": time, "redis": bool}: a liveness probe checks its age, a readiness probe its Redis '
        "flag (the worker serves no API; waiting for Redis is alive, not ready). Empty: no file.",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, le=300, description="How often the heartbeat file is rewritten."
    )
    metrics_port: int = Field(
        8003,
        ge=0,
        le=65535,
        description="The worker serves its Prometheus metrics (omnirag_indexer_*) on this port at /metrics "
        "(0: not served). Only the worker: a one-shot run reports its outcome on exit instead.",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface the worker's /metrics binds. 127.0.0.1 keeps a laptop's private; "
        "the chart sets 0.0.0.0.",
    )
    metrics_refresh_seconds: float = Field(
        5.0, gt=0, le=300, description="How often the worker reads the queue's gauges from Redis."
    )
    keep_uploads: bool = Field(
        False,
        description="Keep an uploaded file after its version is published. Off: the index holds its "
        "text and the file is removed, so the uploads volume holds only work still to do (and files "
        "of dead-lettered jobs, kept for a retry by hand).",
    )
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="Larger local files are skipped.")
    # The memory budget of one upload (an upload is hostile until read): see loaders.LoadLimits.
    max_image_pixels: int = Field(
        36_000_000,
        ge=1_000_000,
        description="Pixels of an image read by OCR, checked from its header before decoding (the "
        "gateway's cap). Higher reads bigger scans; a 13000x13000 PNG of 200 KB decodes to 500 MB.",
    )
    max_pdf_pages: int = Field(
        2000, ge=1, description="Pages of a PDF read; later pages are left out (logged). Bounds the work."
    )
    max_text_chars: int = Field(
        5_000_000,
        ge=1000,
        description="Characters kept from one document (about 6,000 chunks to embed); the rest is "
        "left out (logged). Higher: bigger documents whole, longer and larger jobs.",
    )
    max_unpacked_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of XML unpacked from a DOCX (declared, then counted as unpacked); parsed XML "
        "takes several times this in memory. Images inside are never unpacked.",
    )
    max_zip_ratio: float = Field(
        100.0,
        ge=10,
        description="Compression ratio of a ZIP entry (over 1 MiB) taken for a decompression bomb. "
        "Zeros deflate at about 1000:1, Word's XML at 5-20:1.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Tries of an upload whose failure may pass (embedder down, lock busy) before it is "
        "dead-lettered. A file that cannot be read is dead-lettered on the first.",
    )
    max_worker_deaths: int = Field(
        2,
        ge=1,
        le=100,
        description="Times a worker may die (OOM, SIGKILL) holding an upload before the next worker "
        "dead-letters it instead of dying too. Low: a restart in the middle of a job counts as one.",
    )
    claim_idle_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A worker renews its hold on the upload in hand every third of this; an upload "
        "held longer without renewal (its worker died) is taken by the next worker. Short: faster "
        "recovery, more Redis calls.",
    )
    redis_retry_max_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest wait between reconnection attempts while Redis is down (the wait doubles "
        "from 0.5 s); the worker reports not-ready meanwhile and stays alive.",
    )
