"""Why a download failed, each with its own exit code, so a Job's status says it without logs.

Messages are one line, name the model's repo and endpoint, and never carry a token.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2
EXIT_REPO_NOT_FOUND = 3
EXIT_REVISION_NOT_FOUND = 4
EXIT_ACCESS_DENIED = 5
EXIT_NO_SPACE = 6
EXIT_NETWORK = 7
EXIT_INTEGRITY = 8
EXIT_BUSY = 9
EXIT_INTERRUPTED = 130


class DownloadError(Exception):
    """A failure with a stable ``code``, an exit code, and a one-line ``message`` for people."""

    code = "download_failed"
    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        # A hub's message may span lines; the Job's reason is one line.
        self.message = " ".join(message.split())[:600]
        super().__init__(self.message)


class InvalidRequest(DownloadError):
    """The spec, a flag or a setting is wrong (or the token file is unreadable)."""

    code = "invalid_request"
    exit_code = EXIT_INVALID


class RepoNotFound(DownloadError):
    code = "repo_not_found"
    exit_code = EXIT_REPO_NOT_FOUND


class RevisionNotFound(DownloadError):
    code = "revision_not_found"
    exit_code = EXIT_REVISION_NOT_FOUND


class AccessDenied(DownloadError):
    """Gated repo, refused token, or a private repo the token cannot read."""

    code = "access_denied"
    exit_code = EXIT_ACCESS_DENIED


class NoSpace(DownloadError):
    code = "no_space"
    exit_code = EXIT_NO_SPACE


class NetworkFailure(DownloadError):
    """The hub could not be reached, or kept failing, after the bounded retries."""

    code = "network"
    exit_code = EXIT_NETWORK


class IntegrityFailure(DownloadError):
    """A file's bytes did not match the size or hash the hub listed, even after a fresh download."""

    code = "integrity"
    exit_code = EXIT_INTEGRITY


class Busy(DownloadError):
    """Another process holds the destination's lock."""

    code = "busy"
    exit_code = EXIT_BUSY


class Transient(Exception):
    """One attempt failed in a way that may pass (connection, timeout, 429, 5xx). Retried, never shown raw."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
