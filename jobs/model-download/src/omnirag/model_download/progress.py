"""Progress of one model: a structured log line every few seconds and per file, and a tqdm bar on a
terminal. Threads report bytes as they arrive; one lock keeps the counters straight."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

log = logging.getLogger("omnirag.model_download")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    def __init__(
        self, model: str, total_bytes: int, total_files: int, interval: float, bar: bool = False
    ) -> None:
        self.model = model
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.interval = interval
        self.done_bytes = 0
        self.received = 0  # bytes over the wire in this run (a resumed prefix is not counted)
        self.files_done = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._lock = threading.Lock()
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_bytes or None,
                desc=model,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def resumed(self, n: int, files: int = 0) -> None:
        """Bytes (and whole files) already on disk from an earlier run."""
        with self._lock:
            self.done_bytes += n
            self.files_done += files
            if self._bar is not None:
                self._bar.update(n)

    def advance(self, n: int) -> None:
        """``n`` bytes arrived (negative: a partial file was discarded)."""
        with self._lock:
            self.done_bytes += n
            if n > 0:
                self.received += n
            if self._bar is not None:
                self._bar.update(n)
            now = time.monotonic()
            if now - self._last_log < self.interval:
                return
            self._last_log = now
            fields = self._fields(now)
        log.info(
            "%s: %s of %s (%s/s)",
            self.model,
            human(fields["done_bytes"]),
            human(self.total_bytes),
            human(fields["bytes_per_second"]),
            extra=fields,
        )

    def file_done(self, path: str, size: int, seconds: float, how: str) -> None:
        with self._lock:
            self.files_done += 1
            done, total = self.files_done, self.total_files
        log.info(
            "%s: %s %s (%s) [%d/%d files]",
            self.model,
            how,
            path,
            human(size),
            done,
            total,
            extra={"model": self.model, "file": path, "size": size, "seconds": round(seconds, 3)},
        )

    def _fields(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.started, 1e-6)
        return {
            "model": self.model,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "percent": round(100 * self.done_bytes / self.total_bytes, 1) if self.total_bytes else None,
            "bytes_per_second": round(self.received / elapsed),
            "files_done": self.files_done,
            "files_total": self.total_files,
        }

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
