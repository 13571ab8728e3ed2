"""A local stand-in for the Hugging Face Hub and ModelScope, for tests that must stay offline.

It speaks the HTTP the real SDKs and this job use, closely enough that ``huggingface_hub.snapshot_download``
and ``modelscope.snapshot_download`` themselves download from it (the tests check that too):

* Hugging Face: ``GET /api/models/{repo}[/revision/{rev}]`` (``sha``), ``GET /api/models/{repo}/tree/{rev}``
  (recursive, paginated with a ``Link`` header), ``GET|HEAD /{repo}/resolve/{rev}/{path}`` with
  ``X-Repo-Commit``, ``ETag``; LFS files answer 302 to a second server (another origin, like the CDN)
  with ``X-Linked-Etag`` / ``X-Linked-Size``. Errors carry ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``). No Xet headers, so clients use plain HTTP.
* ModelScope: ``GET /api/v1/models/{repo}/revisions``, ``GET /api/v1/models/{repo}/repo/files``,
  ``GET /api/v1/models/{repo}/repo?Revision=&FilePath=``, JSON bodies with ``Code`` / ``Data``.

Every byte server honours ``Range: bytes=N-`` (206 / 416). Tests inject failures by file path: cut
the connection after N bytes, or hold it open after N bytes until released. Every request is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from omnirag_harness.http_server import LocalHTTPServer
from omnirag_harness.processes import LOOPBACK


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class FakeRepo:
    """A repository with a history: ``push`` adds a commit and moves the default branch to it."""

    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)
    branch: str = "main"
    token: str | None = None  # private: served only to this token
    gated: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.push(self.files)

    def push(self, files: dict[str, bytes]) -> str:
        history = repr((len(self.commits), sorted(files.items()))).encode()
        commit = hashlib.sha1(history, usedforsecurity=False).hexdigest()
        self.commits[commit] = dict(files)
        self.refs[self.branch] = commit
        self.files = dict(files)
        return commit

    @property
    def head(self) -> str:
        return self.refs[self.branch]

    def tag(self, name: str, commit: str | None = None) -> None:
        self.refs[name] = commit or self.head
        self.tags.add(name)

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        return rev if rev in self.commits else None


@dataclass
class Seen:
    server: str  # "hub" | "cdn"
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names

    @property
    def is_file_get(self) -> bool:
        """A GET for file bytes (not an API listing)."""
        return self.method == "GET" and (
            self.server == "cdn" or "/resolve/" in self.path or ("FilePath" in self.query)
        )


class FakeHub:
    def __init__(self) -> None:
        self.hf: dict[str, FakeRepo] = {}
        self.ms: dict[str, FakeRepo] = {}
        self.seen: list[Seen] = []
        self.cut: dict[str, int] = {}  # path -> bytes to send, then drop the connection (once)
        self.hold: dict[str, tuple[int, threading.Event]] = {}  # path -> bytes, then wait (once)
        self.api_failures: list[int] = []  # statuses for the next API requests
        self.corrupt: set[str] = set()  # paths served with their first byte flipped
        self.tree_page_size = 1000
        self.url = ""
        self.cdn_url = ""
        self._lock = threading.Lock()
        self._by_sha: dict[str, tuple[bytes, str]] = {}

    # ---- set-up -----------------------------------------------------------------------------
    def add_hf(self, repo_id: str, files: dict[str, bytes], **kw: Any) -> FakeRepo:
        repo = FakeRepo(files, branch="main", **kw)
        self.hf[repo_id] = repo
        return repo

    def add_ms(self, repo_id: str, files: dict[str, bytes], **kw: Any) -> FakeRepo:
        repo = FakeRepo(files, branch="master", **kw)
        self.ms[repo_id] = repo
        return repo

    def file_gets(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            out = [s for s in self.seen if s.is_file_get]
        if path is None:
            return out
        return [
            s
            for s in out
            if s.path.endswith("/" + quote(path))
            or s.query.get("FilePath") == path
            or (s.server == "cdn" and self._by_sha.get(s.path.rsplit("/", 1)[-1], (b"", ""))[1] == path)
        ]

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    @contextmanager
    def running(self, *, host: str = LOOPBACK, public_host: str = LOOPBACK) -> Iterator[FakeHub]:
        """Serve the hub and the "CDN" its large files are redirected to, on ``host`` and free
        ports; the URLs it hands out (``url``, ``cdn_url``, the LFS redirects) name ``public_host``
        (a container reaches the host by another name)."""
        with _server(self, "hub", host) as hub, _server(self, "cdn", host) as cdn:
            self.url = f"http://{public_host}:{hub.port}"
            self.cdn_url = f"http://{public_host}:{cdn.port}"
            try:
                yield self
            finally:
                for _, event in self.hold.values():
                    event.set()

    # ---- serving ----------------------------------------------------------------------------
    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _lfs_location(self, data: bytes, path: str) -> str:
        digest = sha256(data)
        self._by_sha[digest] = (data, path)
        return f"{self.cdn_url}/cdn/{digest}"

    def _injection(self, path: str) -> tuple[int | None, threading.Event | None]:
        with self._lock:
            if path in self.cut:
                return self.cut.pop(path), None
            if path in self.hold:
                n, event = self.hold.pop(path)
                return n, event
        return None, None


def _server(hub: FakeHub, name: str, host: str) -> LocalHTTPServer:
    handler = type(f"{name.title()}Handler", (_Handler,), {"hub": hub, "server_name_": name})
    return LocalHTTPServer(handler, host=host)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub
    server_name_: str

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    # ---- plumbing ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.p = unquote(parts.path)
        self.hub._record(
            Seen(
                self.server_name_,
                self.command,
                parts.path,
                self.q,
                {k.lower(): v for k, v in self.headers.items()},
            )
        )
        try:
            if self.server_name_ == "cdn":
                return self._cdn()
            if self.p.startswith("/api/") and self.hub.api_failures:
                status = self.hub.api_failures.pop(0)
                return self._send_json(status, {"error": "injected"}, {"Retry-After": "0"})
            if self.p.startswith("/api/v1/models/"):
                return self._modelscope()
            if self.p.startswith("/api/models/"):
                return self._hf_api()
            if "/resolve/" in self.p:
                return self._hf_resolve()
            self._send_json(404, {"error": "not found"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _hf_error(self, status: int, code: str, message: str) -> None:
        self._send_json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _authorized(self, repo: FakeRepo) -> bool:
        if repo.token is None:
            return True
        auth = self.headers.get("Authorization", "")
        cookie = self.headers.get("Cookie", "")
        return auth == f"Bearer {repo.token}" or f"m_session_id={repo.token}" in cookie

    def _send_bytes(self, data: bytes, path: str, headers: dict[str, str]) -> None:
        if path in self.hub.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
            if start >= len(data) and len(data) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        limit, hold = self.hub._injection(path)
        if limit is None:
            self.wfile.write(body)
            return
        view = memoryview(body)[:limit]
        for i in range(0, len(view), 64 * 1024):
            self.wfile.write(view[i : i + 64 * 1024])
        self.wfile.flush()
        if hold is not None:
            hold.wait(30)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---- Hugging Face -----------------------------------------------------------------------
    def _hf_repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.hub.hf.get(repo_id)
        if repo is None or not self._authorized(repo):
            # The Hub answers a private repo without the right token exactly like a missing one.
            self._hf_error(401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and self.headers.get("Authorization") is None:
            self._hf_error(403, "GatedRepo", "Access to this model is restricted")
            return None
        return repo

    def _hf_api(self) -> None:
        rest = self.p[len("/api/models/") :].split("/")
        repo_id = "/".join(rest[:2])
        repo = self._hf_repo(repo_id)
        if repo is None:
            return
        tail = rest[2:]
        if not tail or tail[0] == "revision":
            rev = "/".join(tail[1:]) if tail else repo.branch
            commit = repo.resolve(rev)
            if commit is None:
                return self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = repo.commits[commit]
            return self._send_json(
                200,
                {
                    "_id": hashlib.md5(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit,
                    "private": repo.token is not None,
                    "gated": repo.gated,
                    "disabled": False,
                    "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "lastModified": "2025-01-01T00:00:00.000Z",
                },
            )
        if tail[0] == "tree":
            commit = repo.resolve("/".join(tail[1:]))
            if commit is None:
                return self._hf_error(404, "RevisionNotFound", "Invalid rev id")
            entries = self._tree(repo, commit)
            cursor = int(self.q.get("cursor", "0"))
            page = entries[cursor : cursor + self.hub.tree_page_size]
            headers = {}
            if cursor + self.hub.tree_page_size < len(entries):
                nxt = f"{self.hub.url}/api/models/{repo_id}/tree/{commit}?recursive=True&expand=False"
                headers["Link"] = f'<{nxt}&cursor={cursor + self.hub.tree_page_size}>; rel="next"'
            return self._send_json(200, page, headers)
        self._send_json(404, {"error": "not found"})

    def _tree(self, repo: FakeRepo, commit: str) -> list[dict[str, Any]]:
        files = repo.commits[commit]
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        out: list[dict[str, Any]] = [
            {
                "type": "directory",
                "oid": hashlib.sha1(d.encode(), usedforsecurity=False).hexdigest(),
                "size": 0,
                "path": d,
            }
            for d in dirs
        ]
        for p in sorted(files):
            data = files[p]
            entry: dict[str, Any] = {"type": "file", "oid": git_sha1(data), "size": len(data), "path": p}
            if p in repo.lfs:
                entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
                entry["oid"] = git_sha1(
                    f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(data)}".encode()
                )
            out.append(entry)
        return sorted(out, key=lambda e: e["path"])

    def _hf_resolve(self) -> None:
        head, _, rest = self.p.lstrip("/").partition("/resolve/")
        repo = self._hf_repo(head)
        if repo is None:
            return
        rev, _, path = rest.partition("/")
        commit = repo.resolve(rev)
        if commit is None:
            return self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        data = repo.commits[commit].get(path)
        if data is None:
            return self._hf_error(404, "EntryNotFound", f"{path} does not exist")
        headers = {"X-Repo-Commit": commit}
        if path in repo.lfs:
            location = self.hub._lfs_location(data, path)
            self.send_response(302)
            for k, v in {
                **headers,
                "Location": location,
                "X-Linked-Etag": f'"{sha256(data)}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_sha1(data)}"',
                "Content-Length": "0",
            }.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._send_bytes(data, path, {**headers, "ETag": f'"{git_sha1(data)}"'})

    def _cdn(self) -> None:
        digest = self.p.rsplit("/", 1)[-1]
        found = self.hub._by_sha.get(digest)
        if found is None:
            return self._send_json(404, {"error": "no such object"})
        data, path = found
        self._send_bytes(data, path, {"ETag": f'"{digest}"'})

    # ---- ModelScope -------------------------------------------------------------------------
    def _ms_json(self, status: int, data: Any, message: str = "success") -> None:
        self._send_json(
            status,
            {
                "Code": 200 if status == 200 else 10010205001,
                "Data": data,
                "Message": message,
                "RequestId": "fake",
                "Success": status == 200,
            },
        )

    def _modelscope(self) -> None:
        rest = self.p[len("/api/v1/models/") :].split("/")
        repo_id = "/".join(rest[:2])
        tail = "/".join(rest[2:])
        repo = self.hub.ms.get(repo_id)
        if repo is None:
            return self._ms_json(404, None, f"model {repo_id} not found")
        if not self._authorized(repo):
            return self._ms_json(401, None, "login required")
        if tail == "revisions":
            branches = [{"Revision": r, "CreatedAt": 1700000000} for r in repo.refs if r not in repo.tags]
            tags = [{"Revision": r, "CreatedAt": 1700000000} for r in sorted(repo.tags)]
            return self._ms_json(200, {"RevisionMap": {"Branches": branches, "Tags": tags}})
        commit = repo.resolve(self.q.get("Revision", repo.branch))
        if commit is None:
            return self._ms_json(404, None, "revision not found")
        files = repo.commits[commit]
        if tail == "repo/files":
            entries: list[dict[str, Any]] = []
            for d in sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}):
                entries.append({"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0})
            for p in sorted(files):
                entries.append(
                    {
                        "Name": p.rsplit("/", 1)[-1],
                        "Path": p,
                        "Type": "blob",
                        "Size": len(files[p]),
                        "Sha256": sha256(files[p]),
                        "Revision": commit,
                        "IsLFS": p in repo.lfs,
                        "Mode": "100644",
                        "CommittedDate": 1700000000,
                    }
                )
            return self._ms_json(200, {"Files": entries})
        if tail == "repo":
            path = self.q.get("FilePath", "")
            data = files.get(path)
            if data is None:
                return self._ms_json(404, None, "file not found")
            if path in repo.lfs:
                self.send_response(302)
                self.send_header("Location", self.hub._lfs_location(data, path))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self._send_bytes(data, path, {"X-Linked-ETag": sha256(data)})
        self._ms_json(404, None, "not found")


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
