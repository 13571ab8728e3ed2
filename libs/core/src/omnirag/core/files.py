"""Reading small files whose size someone else controls (mounted secrets, specs) without trusting it."""

from __future__ import annotations

from pathlib import Path


class TooLarge(ValueError):
    """The file holds more than the caller's limit."""

    def __init__(self, path: str | Path, limit: int) -> None:
        super().__init__(f"{path}: larger than {limit} bytes")
        self.limit = limit


def read_capped(path: str | Path, limit: int) -> bytes:
    """The file's bytes, reading at most ``limit + 1`` of them: ``TooLarge`` when it holds more
    than ``limit``, ``OSError`` as raised when it cannot be read."""
    with Path(path).open("rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise TooLarge(path, limit)
    return raw
