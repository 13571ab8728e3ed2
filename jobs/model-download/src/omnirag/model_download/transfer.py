"""One file from URL to its place on disk: resumed with HTTP Range, hashed as it streams, checked
against the hub's size and hash, fsynced, then renamed into place. Never a half file at the final path.

Retries are bounded per file: ``retries`` failed attempts in a row without a new byte end it. A
read that makes progress restarts the count, so a link that drops every few hundred MB still
finishes, while a dead hub fails after ``retries`` backoffs.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnirag.model_download.errors import DownloadError, IntegrityFailure, NetworkFailure, NoSpace, Transient
from omnirag.model_download.progress import Progress, human
from omnirag.model_download.sources import RemoteFile, status_error, transport_reason

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("omnirag.model_download")

CHUNK = 1024 * 1024
MAX_BACKOFF = 60.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Cancelled(Exception):
    """Another file failed (or the job was interrupted): stop, keep the partial file."""


class Mismatch(Exception):
    """The bytes are not the ones the hub listed."""


@dataclass(frozen=True)
class FileTask:
    remote: RemoteFile
    url: str
    part: Path
    final: Path


def new_hasher(f: RemoteFile) -> Any:
    if f.sha256:
        return hashlib.sha256()
    if f.git_sha1 and f.size is not None:
        # A git blob id is sha1("blob <size>\0" + content).
        h = hashlib.sha1(usedforsecurity=False)
        h.update(f"blob {f.size}\0".encode())
        return h
    return None


def expected_digest(f: RemoteFile) -> str | None:
    return f.sha256 or (f.git_sha1 if f.size is not None else None)


def hash_file(path: Path, hasher: Any, cancel: threading.Event | None = None) -> None:
    with path.open("rb") as fh:
        while block := fh.read(8 * CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            hasher.update(block)


def verify_existing(f: RemoteFile, path: Path, cancel: threading.Event | None = None) -> bool:
    """Is the file at ``path`` exactly ``f``? Only answerable when the hub gave a hash."""
    hasher = new_hasher(f)
    if hasher is None or f.size is None:
        return False
    try:
        if not path.is_file() or path.stat().st_size != f.size:
            return False
        hash_file(path, hasher, cancel)
    except OSError:
        return False
    return bool(hasher.hexdigest() == expected_digest(f))


def backoff_delay(attempt: int, base: float, retry_after: float | None) -> float:
    delay = min(MAX_BACKOFF, base * (2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF))
    return delay


class Transfer:
    def __init__(
        self,
        client: httpx.Client,
        headers: dict[str, str],
        *,
        retries: int,
        backoff: float,
        progress: Progress,
        cancel: threading.Event,
        on_done: Any,
    ) -> None:
        self.client = client
        self.headers = headers
        self.retries = retries
        self.backoff = backoff
        self.progress = progress
        self.cancel = cancel
        self.on_done = on_done  # (RemoteFile, size) -> None, once the file is in place

    def fetch(self, task: FileTask) -> int:
        """Download ``task`` to its final path; returns its size."""
        started = time.monotonic()
        failures = 0
        mismatches = 0
        task.part.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if self.cancel.is_set():
                raise Cancelled
            before = _size(task.part)
            try:
                size = self._attempt(task)
            except Transient as exc:
                failures = 1 if _size(task.part) > before else failures + 1
                if failures > self.retries:
                    raise NetworkFailure(
                        f"{task.remote.path}: {exc.reason}; gave up after {failures} attempt"
                        f"{'s' if failures > 1 else ''} without progress"
                    ) from None
                delay = backoff_delay(failures, self.backoff, exc.retry_after)
                log.warning(
                    "%s: %s; retry %d/%d in %.1fs",
                    task.remote.path,
                    exc.reason,
                    failures,
                    self.retries,
                    delay,
                    extra={"model": self.progress.model, "file": task.remote.path},
                )
                if self.cancel.wait(delay):
                    raise Cancelled from None
                continue
            except Mismatch as exc:
                mismatches += 1
                kept = _size(task.part)
                task.part.unlink(missing_ok=True)
                self.progress.advance(-kept)
                if mismatches >= 2:
                    raise IntegrityFailure(
                        f"{task.remote.path}: {exc} (twice; the hub or its mirror serves other bytes than "
                        "it lists)"
                    ) from None
                log.warning(
                    "%s: %s; downloading it again from the start",
                    task.remote.path,
                    exc,
                    extra={"model": self.progress.model, "file": task.remote.path},
                )
                continue
            self._place(task, size)
            self.progress.file_done(task.remote.path, size, time.monotonic() - started, "downloaded")
            return size

    def _attempt(self, task: FileTask) -> int:
        f = task.remote
        have = _size(task.part)
        if f.size is not None and have > f.size:
            task.part.unlink()
            self.progress.advance(-have)
            have = 0
        hasher = new_hasher(f)
        if f.size is not None and have == f.size and task.part.exists():
            # Every byte arrived in an earlier run, which stopped before the rename.
            if hasher is not None:
                hash_file(task.part, hasher, self.cancel)
            self._check(f, have, hasher)
            return have

        import httpx

        headers = dict(self.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with self.client.stream("GET", task.url, headers=headers) as resp:
                return self._receive(task, resp, have, hasher)
        except httpx.TransportError as exc:
            raise Transient(transport_reason(exc)) from None

    def _receive(self, task: FileTask, resp: httpx.Response, have: int, hasher: Any) -> int:
        f = task.remote
        if resp.status_code == 416 and have:
            raise Mismatch(f"the hub refused to resume at byte {have} (HTTP 416): its file is shorter")
        if resp.status_code >= 400:
            err = status_error(resp.status_code, f.path, resp.headers.get("Retry-After"))
            raise err
        total: int | None
        if resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                task.part.unlink(missing_ok=True)
                self.progress.advance(-have)
                raise Transient(
                    f"asked to resume at byte {have}, got Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; starting the file over"
                )
            total = None if m.group(3) == "*" else int(m.group(3))
            offset, mode = have, "ab"
        else:
            if have:
                log.info(
                    "%s: the server ignored the Range request; starting the file over",
                    f.path,
                    extra={"model": self.progress.model, "file": f.path},
                )
                self.progress.advance(-have)
            encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() and not encoded else None
            offset, mode = 0, "wb"
        if f.size is not None and total is not None and total != f.size:
            raise Mismatch(f"the hub serves {total} bytes, its listing says {f.size}")
        if offset and hasher is not None:
            hash_file(task.part, hasher, self.cancel)

        try:
            with task.part.open(mode) as fh:
                for chunk in resp.iter_bytes():
                    if self.cancel.is_set():
                        raise Cancelled
                    if f.size is not None and offset + len(chunk) > f.size:
                        raise Mismatch(f"the hub sent more than the {f.size} bytes it lists")
                    fh.write(chunk)
                    offset += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    self.progress.advance(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(
                    f"no space left on the device of {task.final.parent} while writing {f.path} "
                    f"({human(offset)} of it kept for the next run)"
                ) from None
            raise
        expected = total if total is not None else f.size
        if expected is not None and offset < expected:
            raise Transient(f"connection closed after {offset} of {expected} bytes")
        self._check(f, offset, hasher)
        return offset

    def _check(self, f: RemoteFile, size: int, hasher: Any) -> None:
        if f.size is not None and size != f.size:
            raise Mismatch(f"got {size} bytes, the hub lists {f.size}")
        want = expected_digest(f)
        if hasher is not None and want is not None and hasher.hexdigest() != want:
            raise Mismatch(f"content hash {hasher.hexdigest()[:12]}… is not the listed {want[:12]}…")

    def _place(self, task: FileTask, size: int) -> None:
        task.final.parent.mkdir(parents=True, exist_ok=True)
        if task.final.is_dir():
            raise DownloadError(f"{task.final} is a directory; cannot put the file {task.remote.path} there")
        os.replace(task.part, task.final)
        self.on_done(task.remote, size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
