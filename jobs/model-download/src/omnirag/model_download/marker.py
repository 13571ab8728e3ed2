"""The completion marker and the journal of finished files (formats in the package docstring)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnirag.model_download import MARKER_FORMAT, MARKER_NAME, WORK_DIR_NAME, __version__
from omnirag.model_download.sources import RemoteFile, Snapshot
from omnirag.model_download.spec import ModelRequest

log = logging.getLogger("omnirag.model_download")

MAX_MARKER_BYTES = 64 * 1024 * 1024


def content_digest(files: list[RemoteFile]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\t{f.size}\t{f.content_id}\n".encode())
    return f"sha256:{h.hexdigest()}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path``, fsync, rename over it, fsync the directory: readers see the old file or the
    new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Marker:
    data: dict[str, Any]

    @property
    def files(self) -> dict[str, RemoteFile]:
        out: dict[str, RemoteFile] = {}
        for f in self.data.get("files", []):
            out[f["path"]] = RemoteFile(
                path=f["path"], size=f["size"], sha256=f.get("sha256"), git_sha1=f.get("git_sha1")
            )
        return out

    def matches(self, req: ModelRequest) -> bool:
        """Same request? The endpoint is left out: a mirror serves the same bytes as the origin."""
        d = self.data
        return (
            d.get("source") == req.source
            and d.get("repo") == req.repo
            and d.get("revision") == req.revision
            and list(d.get("allow_patterns", [])) == list(req.allow_patterns)
            and list(d.get("ignore_patterns", [])) == list(req.ignore_patterns)
        )

    def missing(self, dest: Path) -> list[str]:
        """Files the marker lists that are not on disk with their size (cheap: no hashing)."""
        gone = []
        for f in self.files.values():
            p = dest / f.path
            try:
                if not p.is_file() or p.stat().st_size != f.size:
                    gone.append(f.path)
            except OSError:
                gone.append(f.path)
        return gone


def read(dest: Path) -> Marker | None:
    path = dest / MARKER_NAME
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the marker %s: %s; treating the model as not downloaded", path, exc)
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
            raise ValueError(f"format is not {MARKER_FORMAT}")
        marker = Marker(data)
        marker.files  # noqa: B018 - parse now so a broken file list fails here
        return marker
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable marker %s (%s)", path, str(exc)[:200])
        return None


def write(req: ModelRequest, snap: Snapshot, files: list[RemoteFile]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "name": req.name,
        "source": req.source,
        "repo": req.repo,
        "endpoint": req.endpoint,
        "revision": req.revision,
        "resolved_revision": snap.resolved_revision,
        "content_digest": content_digest(files),
        "allow_patterns": list(req.allow_patterns),
        "ignore_patterns": list(req.ignore_patterns),
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1}
            for f in sorted(files, key=lambda f: f.path)
        ],
        "file_count": len(files),
        "total_bytes": sum(f.size or 0 for f in files),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "downloaded_by": f"omnirag-model-download {__version__}",
    }
    write_atomic(req.dest / MARKER_NAME, json.dumps(data, indent=1, ensure_ascii=False).encode())
    return data


def remove(dest: Path) -> None:
    path = dest / MARKER_NAME
    if path.exists():
        path.unlink()
        fsync_dir(dest)


class Journal:
    """Append-only list of files already verified and moved into place by an unfinished run."""

    def __init__(self, dest: Path) -> None:
        self.path = dest / WORK_DIR_NAME / "journal.jsonl"
        self._lock = threading.Lock()

    def entries(self) -> dict[str, RemoteFile]:
        out: dict[str, RemoteFile] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                d = json.loads(line)
                out[d["path"]] = RemoteFile(
                    path=d["path"], size=d["size"], sha256=d.get("sha256"), git_sha1=d.get("git_sha1")
                )
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill: that file is simply checked again
        return out

    def record(self, f: RemoteFile, size: int) -> None:
        line = json.dumps({"path": f.path, "size": size, "sha256": f.sha256, "git_sha1": f.git_sha1})
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
