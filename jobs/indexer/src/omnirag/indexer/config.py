"""Indexer settings (env prefix ``INDEXER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
    uploads_dir: Path = Field(Path("data/uploads"), description="Where the gateway stores uploaded files.")
    heartbeat_file: Path | None = Field(
        None,
        description="The worker rewrites this file every heartbeat_seconds while its event loop runs and "
        "Redis answers; a liveness probe checks its age (the worker has no HTTP port). Empty: no file.",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, le=300, description="How often the heartbeat file is rewritten."
    )
    keep_uploads: bool = Field(
        False,
        description="Keep an uploaded file after its version is published. Off: the index holds its "
        "text and the file is removed, so the uploads volume holds only work still to do (and files "
        "of dead-lettered jobs, kept for a retry by hand).",
    )
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="Larger local files are skipped.")
