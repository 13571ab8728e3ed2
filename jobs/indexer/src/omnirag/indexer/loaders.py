"""Turn one local file into a title and plain (Markdown-ish) text.

Supported: Markdown, plain text, HTML, PDF, DOCX and images (PNG / JPEG, read by OCR). Every loader
returns text with normalised whitespace: trailing spaces stripped, runs of blank lines collapsed to
one, paragraph breaks kept. Headings are written as Markdown ``#`` lines where the format has them,
so the splitter can split on them later.

Errors are exceptions: :class:`UnsupportedFile` (unknown suffix), :class:`TooLarge` (over
``max_bytes``), :class:`OverBudget` (a decompression bomb: more pixels, unpacked bytes or
compression than :class:`LoadLimits` allows) and :class:`LoadError` (corrupt, encrypted, unreadable;
the message says why). All subclass :class:`LoadError`, so ``except LoadError`` catches them;
``LoadError.permanent`` says whether reading the same bytes again could ever succeed.

Every loader works within a memory budget (:class:`LoadLimits`): an upload is hostile until read. A
ZIP container (DOCX) is checked from its directory before anything is unpacked (entries, declared
sizes, compression ratio) and then unpacked with a running count of the bytes really produced, so a
directory that lies is caught too; an image's pixel count is checked from its header before a pixel
is decoded; a PDF is read up to a number of pages; extracted text stops at a number of characters.

Decoding, HTML, Markdown and OCR are :mod:`omnirag.extract`'s, as the crawler's and the gateway's
are: a file, the same page crawled and the same picture in a chat give the same text. Images (and
scanned PDF pages) are read by the :class:`~omnirag.extract.OCR` the caller passes (``ocr=``): one
per run or worker, so that its engine loads once; without one, a load that needs OCR makes its own
and closes it afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnirag.extract import (
    OCR,
    ImageError,
    OCRFailed,
    TooManyPixels,
    decode_text,
    html_document,
    markdown_document,
    normalize_text,
)

if TYPE_CHECKING:
    from omnirag.indexer.config import IndexerSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 50 * 1024 * 1024

#: Most pages of a PDF without a text layer that are read by OCR (each page costs about a second).
MAX_OCR_PAGES = 20
#: A ZIP central directory larger than this is refused before zipfile builds an object per entry
#: (about 40,000 entries; a DOCX has a few dozen).
ZIP_MAX_DIRECTORY_BYTES = 4 * 1024 * 1024
#: The compression ratio is checked only on entries larger than this: small XML parts legitimately
#: compress far better than a whole document does.
ZIP_RATIO_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoadLimits:
    """The memory budget of one load (see the module doc). The defaults suit a worker with a few GB;
    the worker builds its own from its settings."""

    max_bytes: int = DEFAULT_MAX_BYTES
    #: Pixels of one image (PNG / JPEG, or an image inside a PDF), checked from its header; the
    #: gateway's own cap is the same 6000 x 6000.
    max_image_pixels: int = 36_000_000
    #: Pages of a PDF read; later pages are left out (and logged).
    max_pdf_pages: int = 2000
    #: Characters of text kept from one document; the rest is left out (and logged).
    max_text_chars: int = 5_000_000
    #: Bytes unpacked from a ZIP container (declared and really produced).
    max_unpacked_bytes: int = 100 * 1024 * 1024
    #: Uncompressed : compressed ratio above which an entry is taken for a bomb (zeros deflate at
    #: about 1000:1; Word's XML at 5-20:1).
    max_zip_ratio: float = 100.0

    @classmethod
    def from_settings(cls, settings: IndexerSettings) -> LoadLimits:
        """The budget the indexer's settings give (the worker's, or a knowledge-base run's)."""
        return cls(
            max_bytes=settings.max_file_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_pdf_pages=settings.max_pdf_pages,
            max_text_chars=settings.max_text_chars,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_zip_ratio=settings.max_zip_ratio,
        )


class LoadError(Exception):
    """The file could not be read (corrupt, encrypted, empty of text...); the message says why.

    ``permanent``: the same bytes will fail the same way on every try (the default); False only
    for an error of the disk or volume underneath, which a retry may not meet again.
    """

    permanent: bool = True


class UnsupportedFile(LoadError):
    """No loader for this file's suffix."""


class TooLarge(LoadError):
    """The file is larger than the allowed maximum."""


class OverBudget(LoadError):
    """Reading the file would take more memory than :class:`LoadLimits` allows (a decompression
    bomb: too many pixels, too many unpacked bytes, a compression ratio no document has)."""


def _cap_text(text: str, limits: LoadLimits, stem: str) -> str:
    if len(text) <= limits.max_text_chars:
        return text
    log.warning("%s: text cut at %d of %d characters", stem, limits.max_text_chars, len(text))
    return text[: limits.max_text_chars]


@dataclass(frozen=True)
class LoadedFile:
    title: str
    text: str
    content_type: str


# --------------------------------------------------------------------------------------------- text


def _load_plain(data: bytes, stem: str, limits: LoadLimits, ocr: OCR) -> LoadedFile:
    return LoadedFile(title=stem, text=normalize_text(decode_text(data)), content_type="text/plain")


def _load_markdown(data: bytes, stem: str, limits: LoadLimits, ocr: OCR) -> LoadedFile:
    markdown = markdown_document(normalize_text(decode_text(data)))
    return LoadedFile(title=markdown.title or stem, text=markdown.text, content_type="text/markdown")


# --------------------------------------------------------------------------------------------- HTML


def _load_html(data: bytes, stem: str, limits: LoadLimits, ocr: OCR) -> LoadedFile:
    page = html_document(decode_text(data, "text/html"))
    return LoadedFile(title=page.title or stem, text=page.text, content_type="text/html")


# ---------------------------------------------------------------------------------------------- PDF


_BAD_PDF_TITLES = {"untitled", "untitled document", "untitled-1", "title", "document"}


def _load_pdf(data: bytes, stem: str, limits: LoadLimits, ocr: OCR) -> LoadedFile:
    # pypdf bounds each stream it inflates (75 MB, its Configuration); pages and text are ours.
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
    except Exception as exc:
        raise LoadError(f"cannot read PDF: {exc}") from exc

    if reader.is_encrypted:
        # Many PDFs are encrypted with an empty user password (restrictions only): try that.
        try:
            ok = reader.decrypt("")
        except Exception as exc:
            raise LoadError(f"encrypted PDF, cannot decrypt: {exc}") from exc
        if not ok:
            raise LoadError("encrypted PDF (a password is required)")

    try:
        count = len(reader.pages)
        if count > limits.max_pdf_pages:
            log.warning("PDF %s: reading the first %d of %d pages", stem, limits.max_pdf_pages, count)
        pages = [reader.pages[i] for i in range(min(count, limits.max_pdf_pages))]
    except Exception as exc:
        raise LoadError(f"cannot read PDF pages: {exc}") from exc

    texts: list[str] = []
    chars = 0
    for number, page in enumerate(pages, start=1):
        if chars > limits.max_text_chars:
            log.warning("PDF %s: text limit reached at page %d of %d", stem, number, len(pages))
            break
        try:
            page_text = page.extract_text() or ""
        except Exception as exc:
            log.warning("PDF %s: cannot extract text of page %d: %s", stem, number, exc)
            page_text = ""
        page_text = normalize_text(page_text)
        if page_text:
            texts.append(page_text)
            chars += len(page_text)

    title = stem
    try:
        meta = reader.metadata
        meta_title = (meta.title if meta else None) or ""
        meta_title = " ".join(str(meta_title).split())
        if meta_title and meta_title.lower() not in _BAD_PDF_TITLES:
            title = meta_title
    except Exception as exc:
        log.debug("PDF %s: unreadable metadata: %s", stem, exc)

    if texts:
        return LoadedFile(title=title, text="\n\n".join(texts), content_type="application/pdf")

    # No text layer (a scan): read the page images by OCR, for a bounded number of pages.
    ocr_text = _ocr_pdf_pages(pages, stem, limits, ocr) if pages else ""
    if not ocr_text:
        raise LoadError("PDF has no text layer (scanned?) and OCR found no text")
    return LoadedFile(title=title, text=ocr_text, content_type="application/pdf")


def _xobject_pixels(page: Any, image_id: str | list[str]) -> int:
    """Width x height an image XObject declares (0 for an inline image, which pypdf has already
    decoded within its stream limit while parsing the page)."""
    path = [image_id] if isinstance(image_id, str) else list(image_id)
    if path[0].startswith("~"):
        return 0
    obj = page
    for name in path:
        obj = obj["/Resources"].get_object()["/XObject"].get_object()[name].get_object()
    return int(obj.get("/Width", 0)) * int(obj.get("/Height", 0))


def _ocr_pdf_pages(pages: list[Any], stem: str, limits: LoadLimits, ocr: OCR) -> str:
    page_texts: list[str] = []
    for number, page in enumerate(pages[:MAX_OCR_PAGES], start=1):
        lines: list[str] = []
        try:
            image_ids = page.images.keys()
        except Exception as exc:
            log.warning("PDF %s: cannot read images of page %d: %s", stem, number, exc)
            continue
        for image_id in image_ids:
            try:
                # The declared size first: pypdf would inflate and decode the whole image.
                pixels = _xobject_pixels(page, image_id)
                if pixels > limits.max_image_pixels:
                    log.warning("PDF %s: page %d: skipped an image of %d pixels", stem, number, pixels)
                    continue
                text = ocr.read_image(page.images[image_id].image, max_pixels=limits.max_image_pixels)
            except Exception as exc:
                log.warning("PDF %s: OCR failed on page %d: %s", stem, number, exc)
                continue
            if text:
                lines.append(text)
        if lines:
            page_texts.append("\n".join(lines))
    if len(pages) > MAX_OCR_PAGES:
        log.warning("PDF %s: OCR limited to the first %d of %d pages", stem, MAX_OCR_PAGES, len(pages))
    return normalize_text("\n\n".join(page_texts))


# --------------------------------------------------------------------------------------------- DOCX


_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def _docx_heading_level(style_name: str) -> int:
    if style_name.lower() == "title":
        return 1
    match = _HEADING_STYLE.match(style_name.strip())
    return min(int(match.group(1)), 6) if match else 0


def _docx_table(table: Any) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # A merged cell appears once per grid column; write it once.
            if previous is not None and cell._tc is previous:
                continue
            previous = cell._tc
            cells.append(" ".join(cell.text.split()).replace("|", "\\|"))
        if any(cells):
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return ""
    width = rows[0].count(" | ") + 1
    rows.insert(1, "|" + "---|" * width)
    return "\n".join(rows)


def _zip_directory_bytes(data: bytes) -> int | None:
    """Size of the central directory a ZIP's end record declares (None: no end record found).

    Read by hand because zipfile builds an object for every entry while it opens the archive."""
    tail_start = max(0, len(data) - (65535 + 22))
    at = data.rfind(b"PK\x05\x06", tail_start)
    if at < 0 or len(data) - at < 22:
        return None
    (size,) = struct.unpack_from("<I", data, at + 12)
    if size == 0xFFFFFFFF and at >= 20 and data[at - 20 : at - 16] == b"PK\x06\x07":
        # ZIP64: the locator just before the end record points at the ZIP64 end record.
        (record,) = struct.unpack_from("<Q", data, at - 20 + 8)
        if data[record : record + 4] != b"PK\x06\x06" or record + 48 > len(data):
            return None
        (size,) = struct.unpack_from("<Q", data, record + 40)
    return int(size)


def _is_markup(name: str) -> bool:
    return name.lower().endswith((".xml", ".rels"))


def _unpack_docx(data: bytes, limits: LoadLimits) -> bytes:
    """The DOCX's XML parts, unpacked within the budget, as a stored (uncompressed) ZIP for
    python-docx; binary parts (images, embedded objects, fonts) become empty: only text is read."""
    directory = _zip_directory_bytes(data)
    if directory is None:
        raise LoadError("cannot read DOCX: not a ZIP container")
    if directory > ZIP_MAX_DIRECTORY_BYTES:
        raise OverBudget(f"DOCX has a {directory}-byte ZIP directory (at most {ZIP_MAX_DIRECTORY_BYTES})")
    try:
        source = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise LoadError(f"cannot read DOCX: {exc}") from exc
    with source:
        entries = [info for info in source.infolist() if not info.is_dir()]
        for info in entries:
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > ZIP_RATIO_MIN_BYTES and ratio > limits.max_zip_ratio:
                raise OverBudget(
                    f"DOCX part {info.filename[:100]!r} unpacks {info.file_size} bytes from "
                    f"{info.compress_size} (ratio {ratio:.0f}:1, at most {limits.max_zip_ratio:.0f}:1): "
                    "a decompression bomb"
                )
        markup = [info for info in entries if _is_markup(info.filename)]
        declared = sum(info.file_size for info in markup)
        if declared > limits.max_unpacked_bytes:
            raise OverBudget(
                f"DOCX declares {declared} bytes of XML, over the limit of {limits.max_unpacked_bytes}"
            )
        budget = limits.max_unpacked_bytes
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as packed:
            for info in entries:
                if not _is_markup(info.filename):
                    packed.writestr(info.filename, b"")
                    continue
                # The declared sizes passed; count what really comes out, in case they lie.
                parts: list[bytes] = []
                try:
                    with source.open(info) as member:
                        while chunk := member.read(1024 * 1024):
                            budget -= len(chunk)
                            if budget < 0:
                                raise OverBudget(
                                    f"DOCX unpacks to more than {limits.max_unpacked_bytes} bytes of XML"
                                )
                            parts.append(chunk)
                except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
                    raise LoadError(f"cannot read DOCX part {info.filename[:100]!r}: {exc}") from exc
                packed.writestr(info.filename, b"".join(parts))
    return out.getvalue()


def _load_docx(data: bytes, stem: str, limits: LoadLimits, ocr: OCR) -> LoadedFile:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    unpacked = _unpack_docx(data, limits)
    try:
        document = docx.Document(io.BytesIO(unpacked))
    except Exception as exc:
        raise LoadError(f"cannot read DOCX: {exc}") from exc
    del unpacked

    blocks: list[str] = []
    chars = 0
    first_heading: str | None = None
    try:
        for item in document.iter_inner_content():
            if chars > limits.max_text_chars:
                log.warning("DOCX %s: text limit of %d characters reached", stem, limits.max_text_chars)
                break
            if isinstance(item, Paragraph):
                text = item.text.strip()
                if not text:
                    continue
                style = item.style.name if item.style is not None and item.style.name else ""
                level = _docx_heading_level(style)
                if level:
                    first_heading = first_heading or text
                    blocks.append("#" * level + " " + " ".join(text.split()))
                elif "list" in style.lower():
                    blocks.append("- " + text)
                else:
                    blocks.append(text)
                chars += len(text)
            elif isinstance(item, Table):
                table = _docx_table(item)
                if table:
                    blocks.append(table)
                    chars += len(table)
    except Exception as exc:
        raise LoadError(f"cannot read DOCX content: {exc}") from exc

    title = ""
    try:
        title = " ".join((document.core_properties.title or "").split())
    except Exception as exc:
        log.debug("DOCX %s: unreadable core properties: %s", stem, exc)
    return LoadedFile(
        title=title or first_heading or stem,
        text=normalize_text("\n\n".join(blocks)),
        content_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    )


# ---------------------------------------------------------------------------------------------- OCR


def _load_image(data: bytes, stem: str, content_type: str, limits: LoadLimits, ocr: OCR) -> LoadedFile:
    try:
        text = ocr.read_bytes(data, max_pixels=limits.max_image_pixels)
    except TooManyPixels as exc:
        raise OverBudget(str(exc)) from exc
    except ImageError as exc:
        raise LoadError(f"cannot read image: {exc}") from exc
    except OCRFailed as exc:
        raise LoadError(str(exc)) from exc
    text = normalize_text(text)
    if not text:
        raise LoadError("no text found in image")
    return LoadedFile(title=stem, text=text, content_type=content_type)


# ------------------------------------------------------------------------------------------- entry


_LOADERS: dict[str, Callable[[bytes, str, LoadLimits, OCR], LoadedFile]] = {
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".txt": _load_plain,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
    ".png": lambda data, stem, limits, ocr: _load_image(data, stem, "image/png", limits, ocr),
    ".jpg": lambda data, stem, limits, ocr: _load_image(data, stem, "image/jpeg", limits, ocr),
    ".jpeg": lambda data, stem, limits, ocr: _load_image(data, stem, "image/jpeg", limits, ocr),
}

#: File suffixes (lower case, with the dot) that :func:`load_file` can read.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_LOADERS)


def is_supported(path: Path | str) -> bool:
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def _limits(max_bytes: int | None, limits: LoadLimits | None) -> LoadLimits:
    limits = limits or LoadLimits()
    if max_bytes is not None and max_bytes != limits.max_bytes:
        limits = replace(limits, max_bytes=max_bytes)
    return limits


def load_bytes(
    data: bytes,
    filename: str,
    *,
    max_bytes: int | None = None,
    limits: LoadLimits | None = None,
    ocr: OCR | None = None,
) -> LoadedFile:
    """Load a document held in memory (an upload, say); ``filename`` picks the loader by suffix.
    ``max_bytes``, when given, overrides ``limits.max_bytes``; ``ocr`` reads images (see the
    module doc)."""
    limits = _limits(max_bytes, limits)
    name = Path(filename)
    loader = _LOADERS.get(name.suffix.lower())
    if loader is None:
        raise UnsupportedFile(f"unsupported file type {name.suffix or '(no suffix)'!r}: {filename}")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"{filename} is {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        with contextlib.ExitStack() as owned:
            if ocr is None:  # this document's own: its engine loads only if an image is read
                ocr = owned.enter_context(OCR(max_pixels=limits.max_image_pixels))
            loaded = loader(data, name.stem, limits, ocr)
    except MemoryError as exc:
        # What the checks above did not foresee still ends as a refusal, not a dead process.
        raise OverBudget(f"{filename}: out of memory while reading it") from exc
    if len(loaded.text) > limits.max_text_chars:
        loaded = replace(loaded, text=_cap_text(loaded.text, limits, name.stem))
    return loaded


def load_file(
    path: Path, *, max_bytes: int | None = None, limits: LoadLimits | None = None, ocr: OCR | None = None
) -> LoadedFile:
    """Read a local file into title + text; raises UnsupportedFile, TooLarge, OverBudget or LoadError."""
    limits = _limits(max_bytes, limits)
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UnsupportedFile(f"unsupported file type {path.suffix or '(no suffix)'!r}: {path.name}")
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise TooLarge(f"{path.name} is {size} bytes, over the limit of {limits.max_bytes}")
        with path.open("rb") as handle:
            # Read one byte past the limit: a file that grew since stat() is still caught.
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        error = LoadError(f"cannot read {path.name}: {exc.strerror or exc}")
        error.permanent = False  # the disk or volume underneath, not the document
        raise error from exc
    return load_bytes(data, path.name, limits=limits, ocr=ocr)
