"""The two hubs: what a revision holds (files, sizes, hashes) and where each file's bytes are.

Listing goes through each hub's own client (``huggingface_hub.HfApi``, ``modelscope_hub.HubApi``),
so mirrors, pagination and the hubs' error codes are handled as the SDKs handle them. The bytes are
fetched by :mod:`omnirag.model_download.transfer` rather than by ``snapshot_download``: in
huggingface_hub 2.x a download writes to a temporary file with a per-process random name and deletes
it on failure, so a killed Job starts every file again from byte 0; the transfer here keeps one
partial file per (path, content hash) and resumes it with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from omnirag.model_download import __version__
from omnirag.model_download.errors import (
    AccessDenied,
    DownloadError,
    InvalidRequest,
    RepoNotFound,
    RevisionNotFound,
    Transient,
)
from omnirag.model_download.spec import ModelRequest

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("omnirag.model_download")

USER_AGENT = f"omnirag-model-download/{__version__}"
MAX_FILES = 100_000
MAX_PATH_CHARS = 1024
# Names the job keeps for itself inside a model directory; a repo file by these names is refused.
RESERVED = (".omnirag-download.json", ".omnirag-download")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX = re.compile(r"^[0-9a-f]+$")
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


@dataclass(frozen=True)
class RemoteFile:
    """A file of the snapshot. ``size`` is None when the hub does not say (ModelScope lists 0 then)."""

    path: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None

    @property
    def content_id(self) -> str:
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.git_sha1:
            return f"git-sha1:{self.git_sha1}"
        return f"size:{self.size}"


@dataclass(frozen=True)
class Snapshot:
    revision: str
    # The commit the revision pointed at when listed (Hugging Face). ModelScope's API names no commit
    # for a branch, so there it is None and the marker's content_digest identifies the snapshot.
    resolved_revision: str | None
    files: list[RemoteFile]


class Hub(Protocol):
    name: str

    def snapshot(self, req: ModelRequest) -> Snapshot: ...

    def file_url(self, req: ModelRequest, snap: Snapshot, f: RemoteFile) -> str: ...

    def headers(self) -> dict[str, str]: ...


def check_path(path: str) -> str:
    """A repo path becomes a path on disk: refuse anything that could land outside the model's directory."""
    parts = path.split("/")
    if (
        not path
        or len(path) > MAX_PATH_CHARS
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or parts[0] in RESERVED
        or not path.isprintable()
    ):
        raise DownloadError(f"the hub listed an unsafe file path {path[:120]!r}; refusing the snapshot")
    return path


def _hex_or_none(value: object, length: int) -> str | None:
    if isinstance(value, str) and len(value) == length and _HEX.match(value.lower()):
        return value.lower()
    return None


def select(files: Iterable[RemoteFile], allow: tuple[str, ...], ignore: tuple[str, ...]) -> list[RemoteFile]:
    """Apply allow/ignore globs exactly as ``snapshot_download`` does."""
    from huggingface_hub.utils import filter_repo_objects

    chosen = filter_repo_objects(
        list(files),
        allow_patterns=list(allow) or None,
        ignore_patterns=list(ignore) or None,
        key=lambda f: f.path,
    )
    return sorted(chosen, key=lambda f: f.path)


def status_error(status: int, what: str, retry_after: str | None = None) -> DownloadError | Transient:
    """Map an HTTP status from a file download to a retry or a final reason."""
    if status in (408, 425, 429) or status >= 500:
        return Transient(f"HTTP {status} for {what}", _retry_after(retry_after))
    if status in (401, 403):
        return AccessDenied(f"HTTP {status} for {what}: the token is missing or has no access")
    if status == 404:
        return RepoNotFound(f"HTTP 404 for {what}: the hub no longer has it")
    return DownloadError(f"HTTP {status} for {what}")


def adopt_sdk_loggers(*names: str) -> None:
    """The SDKs attach their own stderr handlers; send their records through ours (plain or JSON)
    instead, at WARNING unless the job runs at DEBUG. Their HTTP layers stay at WARNING, as
    omnirag.core.logging keeps httpx: a line per request says nothing the job does not say better."""
    level = "DEBUG" if logging.getLogger().level <= logging.DEBUG else "WARNING"
    for name in names:
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
        lib.setLevel(level)
    for http in ("httpx2", "httpcore2", "urllib3"):
        logging.getLogger(http).setLevel("WARNING")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class HuggingFace:
    name = "huggingface"

    def __init__(self, endpoint: str, token: str | None, timeout: float) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.utils.logging import get_logger

        get_logger()  # configures the SDK's handler on first use: do that now, then take it over
        adopt_sdk_loggers("huggingface_hub")
        self.endpoint = endpoint
        self._token = token
        self._timeout = timeout
        # token=False: never fall back to a token saved on the machine; only the configured one is sent.
        self.api = HfApi(
            endpoint=endpoint,
            token=token or False,
            library_name="omnirag-model-download",
            library_version=__version__,
        )

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(
            token=self._token or False,
            library_name="omnirag-model-download",
            library_version=__version__,
        )
        # Byte offsets for Range and sizes for the check must be those of the file, not of a gzip of it.
        headers["Accept-Encoding"] = "identity"
        return headers

    def snapshot(self, req: ModelRequest) -> Snapshot:
        from huggingface_hub.hf_api import RepoFile

        try:
            info = self.api.repo_info(req.repo, revision=req.revision, timeout=self._timeout)
            if not info.sha:
                raise DownloadError(f"{req.endpoint} named no commit for {req.repo}@{req.revision}")
            files: list[RemoteFile] = []
            for entry in self.api.list_repo_tree(req.repo, recursive=True, revision=info.sha):
                if not isinstance(entry, RepoFile):
                    continue
                if len(files) >= MAX_FILES:
                    raise DownloadError(f"{req.repo} lists more than {MAX_FILES} files; refusing it")
                files.append(
                    RemoteFile(
                        path=check_path(entry.path),
                        size=int(entry.lfs.size if entry.lfs is not None else entry.size),
                        sha256=_hex_or_none(entry.lfs.sha256, 64) if entry.lfs is not None else None,
                        git_sha1=_hex_or_none(entry.blob_id, 40) if entry.lfs is None else None,
                    )
                )
        except DownloadError:
            raise
        except Exception as exc:
            raise self._classify(exc, req) from None
        return Snapshot(revision=req.revision, resolved_revision=info.sha, files=files)

    def file_url(self, req: ModelRequest, snap: Snapshot, f: RemoteFile) -> str:
        from huggingface_hub import hf_hub_url

        # The commit, not the branch: every file comes from the same snapshot even if the branch moves.
        return hf_hub_url(req.repo, f.path, revision=snap.resolved_revision, endpoint=self.endpoint)

    def _classify(self, exc: Exception, req: ModelRequest) -> DownloadError | Transient:
        import httpx2
        from huggingface_hub.errors import (
            DisabledRepoError,
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{req.repo} on {self.endpoint}"
        if isinstance(exc, OfflineModeIsEnabled):
            return InvalidRequest(
                f"HF_HUB_OFFLINE is set, so huggingface_hub will not contact {self.endpoint}; "
                "unset it for this job"
            )
        if isinstance(exc, GatedRepoError):
            return AccessDenied(
                f"{where} is gated: accept its terms on the model page with the account whose token "
                "the job is given (MODEL_DOWNLOAD_HF_TOKEN_FILE or HF_TOKEN)"
            )
        if isinstance(exc, RepositoryNotFoundError):
            return RepoNotFound(
                f"repository {where} not found (or it is private and "
                f"{'the token cannot read it' if self._token else 'no token was given'})"
            )
        if isinstance(exc, RevisionNotFoundError):
            return RevisionNotFound(f"revision {req.revision!r} not found in {where}")
        if isinstance(exc, DisabledRepoError):
            return AccessDenied(f"{where} is disabled on the hub")
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                return RepoNotFound(f"repository {where} not found (HTTP 404)")
            retry_after = exc.response.headers.get("Retry-After") if exc.response is not None else None
            return status_error(status, where, retry_after)
        if isinstance(exc, httpx2.TransportError):
            return Transient(f"cannot reach {self.endpoint}: {type(exc).__name__}: {str(exc)[:160]}")
        if isinstance(exc, ValueError):
            return DownloadError(f"{self.endpoint} answered something that is not the Hub API: {exc}")
        raise exc


class ModelScope:
    name = "modelscope"

    def __init__(self, endpoint: str, token: str | None) -> None:
        from modelscope_hub import HubApi
        from modelscope_hub.utils.logger import get_logger

        get_logger()
        adopt_sdk_loggers("modelscope_hub")
        self.endpoint = endpoint
        self._token = token
        # token="": an explicit "none", so a credential saved by `modelscope login` is not used.
        self.api = HubApi(endpoint=endpoint, token=token or "", user_agent=USER_AGENT)

    def headers(self) -> dict[str, str]:
        from modelscope_hub import __version__ as ms_version

        headers = {"User-Agent": f"{USER_AGENT} modelscope_hub/{ms_version}", "Accept-Encoding": "identity"}
        if self._token:
            # Newer endpoints read the Bearer header, older ones the session cookie (as modelscope_hub
            # sends both). httpx drops both when a redirect leaves the endpoint's origin.
            headers["Authorization"] = f"Bearer {self._token}"
            headers["Cookie"] = f"m_session_id={self._token}"
        return headers

    def snapshot(self, req: ModelRequest) -> Snapshot:
        try:
            revisions = self.api.list_repo_revisions(req.repo, "model")
            names = sorted({r["Revision"] for r in revisions if isinstance(r.get("Revision"), str)})
            # A commit id is not in the branch/tag list; the listing below is then what checks it.
            if names and req.revision not in names and not _COMMIT.match(req.revision):
                shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
                raise RevisionNotFound(
                    f"revision {req.revision!r} not found in {req.repo} on {self.endpoint} (it has: {shown})"
                )
            listed = self.api.list_repo_files(req.repo, "model", revision=req.revision, recursive=True)
        except DownloadError:
            raise
        except Exception as exc:
            raise self._classify(exc, req) from None
        files: list[RemoteFile] = []
        for item in listed:
            if item.is_dir:
                continue
            if len(files) >= MAX_FILES:
                raise DownloadError(f"{req.repo} lists more than {MAX_FILES} files; refusing it")
            sha256 = _hex_or_none(item.sha256, 64)
            # ModelScope lists 0 both for empty files and for sizes it does not know.
            size: int | None = item.size if item.size > 0 or sha256 == EMPTY_SHA256 else None
            files.append(RemoteFile(path=check_path(item.path), size=size, sha256=sha256))
        return Snapshot(revision=req.revision, resolved_revision=None, files=files)

    def file_url(self, req: ModelRequest, snap: Snapshot, f: RemoteFile) -> str:
        return str(self.api.legacy.get_download_url(req.repo, "model", f.path, snap.revision))

    def _classify(self, exc: Exception, req: ModelRequest) -> DownloadError | Transient:
        import requests
        from modelscope_hub.errors import (
            AuthenticationError,
            HubError,
            InvalidParameter,
            NetworkError,
            NotExistError,
            PermissionDeniedError,
            RateLimitError,
            ServerError,
        )

        where = f"{req.repo} on {self.endpoint}"
        if isinstance(exc, NotExistError):
            return RepoNotFound(
                f"repository {where} not found (or it is private and "
                f"{'the token cannot read it' if self._token else 'no token was given'})"
            )
        if isinstance(exc, AuthenticationError | PermissionDeniedError):
            return AccessDenied(f"{where}: the token is missing or has no access")
        if isinstance(exc, NetworkError | ServerError | RateLimitError | requests.RequestException):
            return Transient(f"cannot reach {self.endpoint}: {type(exc).__name__}: {str(exc)[:160]}")
        if isinstance(exc, InvalidParameter):
            return InvalidRequest(f"{where}: the hub refused the request: {str(exc)[:200]}")
        if isinstance(exc, HubError | ValueError | KeyError | TypeError):
            return DownloadError(f"{where}: unexpected answer from the hub: {str(exc)[:200]}")
        raise exc


def make_hub(req: ModelRequest, token: str | None, timeout: float) -> Hub:
    if req.source == "huggingface":
        return HuggingFace(req.endpoint, token, timeout)
    return ModelScope(req.endpoint, token)


def transport_reason(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {str(exc)[:160]}"
