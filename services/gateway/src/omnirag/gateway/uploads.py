"""A multipart upload, read as it streams in with python-multipart's parser: the ``file`` part goes
straight to its final place on disk, one received chunk at a time, and counts against the upload
limit as it arrives. Starlette's ``request.form()`` would spool the whole file to a temporary file
first and only then let us look at its size or its name.

Every limit holds while the body streams, before more of it is read: the body's bytes (413
``file_too_large``), the file's bytes (413 ``file_too_large``), one file (422 ``too_many_files``),
the text fields beside it (422 ``too_many_fields``) and each one's bytes (413 ``field_too_large``),
each part's headers (their number and each one's bytes) and the boundary's length (422
``invalid_multipart``). On any failure nothing is left on disk.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from omnirag.core.errors import InvalidInput, NotReady, PayloadTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_FIELDS = 8  # text fields beside the file (source, title; a few unknown ones are ignored)
MAX_FIELD_BYTES = 8 * 1024  # a 1024-character source or title is at most 4 KiB of UTF-8
# A part's headers: Content-Disposition and Content-Type, and a few a client may add; one header
# line holds a file name of a few hundred characters, percent-encoded (filename*) and all.
MAX_PART_HEADERS = 8
MAX_PART_HEADER_BYTES = 4096 + 128
# Boundaries, part headers and the bounded fields: what a body may carry beyond the file itself.
FORM_OVERHEAD_BYTES = 256 * 1024
MAX_FILENAME_CHARS = 200
DIR_MODE = 0o750
FILE_MODE = 0o640


def sanitize_filename(raw: str) -> str:
    """The client's file name, safe to show and to use as a source name (never as a path)."""
    name = re.split(r"[/\\]", raw)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = " ".join(name.split()).strip(". ")
    if len(name) > MAX_FILENAME_CHARS:
        stem, ext = os.path.splitext(name)
        ext = ext if len(ext) <= 16 else ""
        name = stem[: MAX_FILENAME_CHARS - len(ext)] + ext
    return name or "document"


def normalized_types(types: list[str]) -> frozenset[str]:
    return frozenset(t.lower() if t.startswith(".") else "." + t.lower() for t in types)


def unsupported_type(filename: str, allowed: frozenset[str]) -> HTTPException:
    # 415 through Starlette's HTTPException: the shared error handler renders it in the house
    # shape with the stable code "unsupported_media_type".
    return HTTPException(
        415,
        detail=f"cannot ingest {filename!r}: accepted file types are {', '.join(sorted(allowed))}",
    )


def _filename_star(disposition: bytes) -> str | None:
    """RFC 5987 ``filename*=UTF-8''...``, which python-multipart does not decode."""
    m = re.search(rb"filename\*\s*=\s*([^;]+)", disposition, re.IGNORECASE)
    if not m:
        return None
    charset, _, rest = m.group(1).strip().strip(b'"').decode("latin-1").partition("'")
    _, _, value = rest.partition("'")
    try:
        return unquote(value, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


class MultipartUpload:
    """One multipart body, parsed as it streams: the ``file`` part straight to ``directory``
    under ``<stem><ext>``, the small text fields in memory, everything bounded."""

    def __init__(
        self, *, boundary: bytes, directory: Path, stem: str, types: frozenset[str], max_bytes: int
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.types = types
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self._fd: int | None = None
        self._open_wanted = False
        self._ext = ""
        self._pending: list[bytes] = []
        self._in_file = False
        self._ended = False
        self._field_count = 0
        self._disposition = b""
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._value = bytearray()
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(
                boundary,
                callbacks,
                max_header_count=MAX_PART_HEADERS,
                max_header_size=MAX_PART_HEADER_BYTES,
            )
        except FormParserError:  # a boundary longer than any client sends (the parser's cap)
            raise InvalidInput("malformed multipart boundary", code="invalid_multipart") from None

    # --- parser callbacks (synchronous, no I/O: file data is queued for the next flush) ---

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._value = bytearray()
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidInput("a multipart part has no name", code="invalid_multipart")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename: str | None = None
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
        elif b"filename*" in self._disposition.lower():
            filename = _filename_star(self._disposition) or ""
        if filename is None:
            self._field_count += 1
            if self._field_count > MAX_FIELDS:
                raise InvalidInput(f"more than {MAX_FIELDS} form fields", code="too_many_fields")
            return
        if self._name != FILE_FIELD:
            raise InvalidInput(
                f"unexpected file field {self._name!r}: send the document as the {FILE_FIELD!r} field",
                code="unexpected_file_field",
            )
        if self.filename is not None:
            raise InvalidInput("send one file per request", code="too_many_files")
        self.filename = sanitize_filename(filename)
        ext = Path(self.filename).suffix.lower()
        if ext not in self.types:
            raise unsupported_type(self.filename, self.types)
        self._ext = ext
        self._in_file = True
        self._open_wanted = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the file exceeds the upload limit of {self.max_bytes} bytes", code="file_too_large"
                )
            self._pending.append(data[start:end])
            return
        if len(self._value) + (end - start) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"form field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes", code="field_too_large"
            )
        self._value += data[start:end]

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            return
        if self._name == FILE_FIELD:
            raise InvalidInput(
                f"the {FILE_FIELD!r} field must be a file upload (curl -F {FILE_FIELD}=@notes.md)",
                code="missing_file",
            )
        try:
            self.fields.setdefault(self._name, self._value.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"form field {self._name!r} is not UTF-8", code="invalid_multipart") from None

    def _on_end(self) -> None:
        self._ended = True

    # --- blocking file work, run in a worker thread ---

    def _flush(self) -> None:
        if self._open_wanted:
            self._open_wanted = False
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            path = self.directory / f"{self.stem}{self._ext}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            self._fd = os.open(path, flags, FILE_MODE)
            self.path = path
        pending, self._pending = self._pending, []
        if pending:
            assert self._fd is not None
            for piece in pending:
                view = memoryview(piece)
                while view:
                    view = view[os.write(self._fd, view) :]

    def _finish(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                # On disk before the request is queued: the worker may read it on another node.
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        self._pending = []
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    async def receive(self, stream: AsyncIterator[bytes], limit: int) -> None:
        """Read the whole body; on any failure nothing is left on disk."""
        seen = 0
        try:
            async for chunk in stream:
                seen += len(chunk)
                if seen > limit:
                    raise PayloadTooLarge(
                        f"the upload exceeds the limit of {self.max_bytes} bytes", code="file_too_large"
                    )
                self._parser.write(chunk)
                if self._open_wanted or self._pending:
                    await self._disk(self._flush)
            self._parser.finalize()
            if not self._ended:
                raise InvalidInput("the multipart body ended early", code="invalid_multipart")
            await self._disk(self._finish)
        except FormParserError:
            await run_in_threadpool(self.discard)
            raise InvalidInput("malformed multipart body", code="invalid_multipart") from None
        except BaseException:
            await run_in_threadpool(self.discard)
            raise

    @staticmethod
    async def _disk(work: Callable[[], None]) -> None:
        try:
            await run_in_threadpool(work)
        except OSError as exc:
            # A full or read-only volume is the server's trouble, and usually passes.
            raise NotReady(
                f"cannot store the upload: {exc.strerror or type(exc).__name__}",
                code="upload_storage_unavailable",
            ) from None
