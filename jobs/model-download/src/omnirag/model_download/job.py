"""Download one model: trust a complete marker, or list the revision, check the disk, fetch what is
missing (resuming partial files), and write the marker last."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from omnirag.model_download import MARKER_NAME, WORK_DIR_NAME, marker
from omnirag.model_download.config import ModelDownloadSettings
from omnirag.model_download.errors import (
    Busy,
    DownloadError,
    InvalidRequest,
    NetworkFailure,
    NoSpace,
    Transient,
)
from omnirag.model_download.progress import Progress, human
from omnirag.model_download.sources import Hub, RemoteFile, make_hub, select
from omnirag.model_download.spec import ModelRequest
from omnirag.model_download.transfer import (
    Cancelled,
    FileTask,
    Transfer,
    backoff_delay,
    new_hasher,
    verify_existing,
)

log = logging.getLogger("omnirag.model_download")
T = TypeVar("T")


@dataclass
class Outcome:
    name: str
    source: str
    repo: str
    revision: str
    resolved_revision: str | None
    dest: str
    state: str  # "downloaded" | "updated" | "up-to-date"
    checked_hub: bool
    files: int
    total_bytes: int
    received_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def with_retries(call: Callable[[], T], *, retries: int, backoff: float, what: str) -> T:
    """Run a hub request, retrying what may pass (connection, timeout, 429, 5xx) a bounded number of times."""
    attempt = 0
    while True:
        try:
            return call()
        except Transient as exc:
            attempt += 1
            if attempt > retries:
                raise NetworkFailure(
                    f"{what}: {exc.reason}; gave up after {attempt} attempt{'s' if attempt > 1 else ''}"
                ) from None
            delay = backoff_delay(attempt, backoff, exc.retry_after)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, exc.reason, attempt, retries, delay)
            time.sleep(delay)


@contextlib.contextmanager
def dest_lock(dest: Path) -> Iterator[None]:
    """One writer per directory (two Job pods after a quick `helm upgrade`). flock: gone with the process."""
    work = dest / WORK_DIR_NAME
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{dest}: another download into this directory is running") from None
        yield
    finally:
        os.close(fd)


def same_content(a: RemoteFile, b: RemoteFile) -> bool:
    if a.sha256 or b.sha256:
        return a.sha256 == b.sha256
    if a.git_sha1 or b.git_sha1:
        return a.git_sha1 == b.git_sha1
    return a.size is not None and a.size == b.size


def part_name(f: RemoteFile) -> str:
    # Keyed by path and content: a partial file is only ever resumed towards the bytes it started as.
    return hashlib.sha256(f"{f.path}\0{f.content_id}".encode()).hexdigest()[:32] + ".part"


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def check_space(dest: Path, need: int, reserve: int, count: int) -> None:
    free = shutil.disk_usage(dest).free
    if need + reserve > free:
        raise NoSpace(
            f"{dest}: needs {human(need)} more for {count} file(s) plus a {human(reserve)} reserve, "
            f"but only {human(free)} is free (MODEL_DOWNLOAD_RESERVE_BYTES sets the reserve)"
        )


def _remove_stale(dest: Path, paths: set[str]) -> None:
    """Delete files an earlier run of this job wrote that the current snapshot no longer has."""
    for rel in sorted(paths):
        target = dest / rel
        if target.is_file() and not target.is_symlink():
            target.unlink()
            log.info("removed %s (not in the snapshot any more)", rel, extra={"file": rel})
            parent = target.parent
            while parent != dest and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


def _fsync_dirs(dirs: set[Path]) -> None:
    for d in sorted(dirs):
        marker.fsync_dir(d)


def _outcome(
    req: ModelRequest, state: str, checked: bool, data: dict[str, Any], received: int, t0: float
) -> Outcome:
    return Outcome(
        name=req.name,
        source=req.source,
        repo=req.repo,
        revision=req.revision,
        resolved_revision=data.get("resolved_revision"),
        dest=str(req.dest),
        state=state,
        checked_hub=checked,
        files=int(data.get("file_count", 0)),
        total_bytes=int(data.get("total_bytes", 0)),
        received_bytes=received,
        seconds=round(time.monotonic() - t0, 3),
    )


def download(
    req: ModelRequest, settings: ModelDownloadSettings, *, bar: bool = False, hub: Hub | None = None
) -> Outcome:
    t0 = time.monotonic()
    old = marker.read(req.dest)
    if old is not None and old.matches(req) and not settings.refresh:
        gone = old.missing(req.dest)
        if not gone:
            log.info(
                "%s: complete at %s (%s), nothing to download",
                req.name,
                req.dest,
                old.data.get("resolved_revision") or old.data.get("content_digest"),
                extra={"model": req.name},
            )
            return _outcome(req, "up-to-date", False, old.data, 0, t0)
        log.warning(
            "%s: the marker lists %d file(s) that are missing or changed size (%s); fetching again",
            req.name,
            len(gone),
            ", ".join(gone[:3]),
            extra={"model": req.name},
        )

    if hub is None:
        hub = make_hub(req, settings.token_for(req.source), settings.read_timeout)
    try:
        req.dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"{req.dest}: cannot create the directory ({exc.strerror})") from None
    with dest_lock(req.dest):
        return _download_locked(req, settings, hub, bar, t0)


def _download_locked(
    req: ModelRequest, settings: ModelDownloadSettings, hub: Hub, bar: bool, t0: float
) -> Outcome:
    dest = req.dest
    old = marker.read(dest)  # again, under the lock
    where = f"{req.repo}@{req.revision} on {req.endpoint}"
    snap = with_retries(
        lambda: hub.snapshot(req),
        retries=settings.retries,
        backoff=settings.retry_backoff_seconds,
        what=f"listing {where}",
    )
    files = select(snap.files, req.allow_patterns, req.ignore_patterns)
    if not files:
        if req.allow_patterns or req.ignore_patterns:
            raise InvalidRequest(
                f"no file of {where} matches allowPatterns {list(req.allow_patterns)} / ignorePatterns "
                f"{list(req.ignore_patterns)} (it has {len(snap.files)} files)"
            )
        raise DownloadError(f"{where} has no files")
    digest = marker.content_digest(files)
    if (
        old is not None
        and old.matches(req)
        and old.data.get("content_digest") == digest
        and not old.missing(dest)
    ):
        log.info(
            "%s: the hub still serves %s; nothing to download",
            req.name,
            snap.resolved_revision or digest,
            extra={"model": req.name},
        )
        return _outcome(req, "up-to-date", True, old.data, 0, t0)

    journal = marker.Journal(dest)
    known: dict[str, RemoteFile] = {**(old.files if old else {}), **journal.entries()}
    partial_dir = dest / WORK_DIR_NAME / "partial"
    partial_dir.mkdir(parents=True, exist_ok=True)

    sizes: dict[str, int] = {}
    todo: list[FileTask] = []
    for f in files:
        final = dest / f.path
        k = known.get(f.path)
        on_disk = _size(final)
        if k is not None and same_content(k, f) and on_disk is not None and on_disk == (f.size or k.size):
            sizes[f.path] = on_disk
        else:
            todo.append(FileTask(f, hub.file_url(req, snap, f), partial_dir / part_name(f), final))

    # Files already here with the listed size and hash (fetched by hand, or a journal lost) are kept.
    candidates = [
        t
        for t in todo
        if new_hasher(t.remote) is not None and t.remote.size is not None and _size(t.final) == t.remote.size
    ]
    if candidates:
        with ThreadPoolExecutor(max_workers=settings.workers) as pool:
            verified = list(pool.map(lambda t: verify_existing(t.remote, t.final), candidates))
        for t, ok in zip(candidates, verified, strict=True):
            if ok:
                assert t.remote.size is not None
                journal.record(t.remote, t.remote.size)
                sizes[t.remote.path] = t.remote.size
                todo.remove(t)
        if any(verified):
            log.info("%s: %d file(s) already present and verified", req.name, sum(verified))

    # Partial files of other revisions, or longer than their file, only take space.
    by_part = {t.part.name: t for t in todo}
    for p in partial_dir.iterdir():
        owner = by_part.get(p.name)
        if owner is None or (owner.remote.size is not None and (_size(p) or 0) > owner.remote.size):
            p.unlink()
    partial_bytes = {t.remote.path: _size(t.part) or 0 for t in todo}
    need = sum(max(0, (t.remote.size or 0) - partial_bytes[t.remote.path]) for t in todo)
    if need:
        check_space(dest, need, settings.reserve_bytes, len(todo))

    # From here on the directory changes: it must not look complete until it is.
    marker.remove(dest)
    _remove_stale(dest, set(known) - {f.path for f in files})

    total = sum(f.size or 0 for f in files)
    log.info(
        "%s: %s (%s) has %d file(s), %s; fetching %d (%s, %s of it resumed) into %s",
        req.name,
        where,
        snap.resolved_revision or digest,
        len(files),
        human(total),
        len(todo),
        human(sum(t.remote.size or 0 for t in todo)),
        human(sum(partial_bytes.values())),
        dest,
        extra={"model": req.name, "revision": snap.resolved_revision, "files_total": len(files)},
    )
    progress = Progress(req.name, total, len(files), settings.progress_seconds, bar=bar)
    progress.resumed(sum(sizes.values()) + sum(partial_bytes.values()), files=len(sizes))
    try:
        sizes.update(_fetch_all(todo, hub, settings, progress, journal))
    finally:
        progress.close()

    done = [
        f if f.size is not None else RemoteFile(f.path, sizes[f.path], f.sha256, f.git_sha1) for f in files
    ]
    _fsync_dirs({dest} | {(dest / f.path).parent for f in files})
    data = marker.write(req, snap, done)
    journal.clear()
    shutil.rmtree(partial_dir, ignore_errors=True)
    state = "updated" if old is not None else "downloaded"
    log.info(
        "%s: %s %s; marker %s written",
        req.name,
        state,
        where,
        dest / MARKER_NAME,
        extra={"model": req.name, "received_bytes": progress.received},
    )
    return _outcome(req, state, True, data, progress.received, t0)


def _fetch_all(
    todo: list[FileTask],
    hub: Hub,
    settings: ModelDownloadSettings,
    progress: Progress,
    journal: marker.Journal,
) -> dict[str, int]:
    if not todo:
        return {}
    import httpx

    cancel = threading.Event()
    sizes: dict[str, int] = {}
    failures: list[BaseException] = []
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    limits = httpx.Limits(max_connections=settings.workers * 2, max_keepalive_connections=settings.workers)
    # One TLS context (CA bundle loaded once, SSL_CERT_FILE honoured) for the direct and proxy routes.
    tls = httpx.create_ssl_context()
    with httpx.Client(
        timeout=timeout, limits=limits, follow_redirects=True, max_redirects=10, verify=tls
    ) as client:
        transfer = Transfer(
            client,
            hub.headers(),
            retries=settings.retries,
            backoff=settings.retry_backoff_seconds,
            progress=progress,
            cancel=cancel,
            on_done=journal.record,
        )
        # Largest first: the long transfers start at once and the small ones fill in around them.
        ordered = sorted(todo, key=lambda t: -(t.remote.size or 0))
        pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="download")
        futures = {pool.submit(transfer.fetch, t): t for t in ordered}
        try:
            for fut in as_completed(futures):
                try:
                    sizes[futures[fut].remote.path] = fut.result()
                except Cancelled:
                    pass
                except Exception as exc:
                    if not failures:
                        failures.append(exc)
                        cancel.set()
        except BaseException:
            # Interrupted: do not wait for a transfer blocked in a read; the caller exits the process.
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    if failures:
        raise failures[0]
    return sizes
