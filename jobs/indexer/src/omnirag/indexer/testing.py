"""Test support for packages whose tests run the indexer for real: the example knowledge bases
indexed into a folder, and the ingest worker on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from omnirag.indexer import spec
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.pipeline import run_kb


def index_knowledge_bases(config: Path, index_root: Path, embedder_url: str) -> Path:
    """Index every knowledge base of ``config`` (e.g. ``config/knowledge-bases.yaml``) into
    ``index_root`` through the embedder at ``embedder_url``; no Redis (a file lock)."""
    settings = IndexerSettings(index_root=index_root, embedder_url=embedder_url, redis_url="")
    for kb in spec.load(config):
        asyncio.run(run_kb(kb, settings))
    return index_root


class WorkerThread:
    """The real ingest worker on its own event loop, as it runs in its own process."""

    def __init__(self, settings: IndexerSettings, uploads: Path) -> None:
        self.settings = settings
        self.uploads = uploads
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="indexer-worker", daemon=True)

    def _run(self) -> None:
        from omnirag.indexer.worker import Worker

        async def main() -> None:
            self.stop = asyncio.Event()
            worker = Worker(self.settings, uploads_dir=self.uploads, block_ms=200)
            try:
                await worker.run(self.stop)
            finally:
                await worker.close()

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self.loop.close()

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 5
        while self.stop is None and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=30)
