"""Test support for packages whose tests run the indexer for real: the example knowledge bases
indexed into a folder, the ingest worker on its own event loop in a thread, and the worker as its
own process (``python -m omnirag.indexer worker``), as it runs in a pod."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from omnirag.indexer import spec
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.pipeline import run_kb
from omnirag_harness.processes import free_port, http_get, stop_process


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


class WorkerProcess:
    """``python -m omnirag.indexer worker`` in its own process, configured by ``INDEXER_*`` variables.

    It runs in ``workdir`` (so no ``.env`` of the checkout leaks in) and logs to ``workdir/worker-
    <n>.log``. ``peak_rss()`` is the kernel's high-water mark of its resident memory (VmHWM), the
    figure an OOM killer compares with a pod's limit. It serves its metrics at ``metrics_url``
    (a free port unless ``env`` names one)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = {**os.environ, "INDEXER_METRICS_PORT": str(free_port()), **env}
        self.metrics_url = f"http://127.0.0.1:{self.env['INDEXER_METRICS_PORT']}/metrics"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        self.starts += 1
        log = (self.workdir / f"worker-{self.starts}.log").open("wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "omnirag.indexer", "worker"],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _status(self, field: str) -> int:
        """A ``kB`` line of /proc/<pid>/status, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} for process {self.pid} (has it exited?)")

    def peak_rss(self) -> int:
        return self._status("VmHWM")

    def rss(self) -> int:
        return self._status("VmRSS")

    def log(self) -> str:
        return (self.workdir / f"worker-{self.starts}.log").read_text(errors="replace")

    def metrics(self, timeout: float = 60) -> str:
        """The worker's /metrics page, once it answers (it starts serving after its imports)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = http_get(self.metrics_url, timeout=2)
                if status == 200:
                    return body.decode()
            except OSError:
                pass
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the worker serves no /metrics:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer does: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
