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
"""

from __future__ import annotations

import io
import logging
import re
import struct
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnirag.indexer.config import IndexerSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 50 * 1024 * 1024

#: Most pages of a PDF without a text layer that are read by OCR (each page costs about a second).
MAX_OCR_PAGES = 20
#: RapidOCR shrinks a larger image to this side before detection anyway; shrinking it while
#: decoding keeps the RGB copies small (a 36 MP image is 108 MB per copy).
OCR_MAX_SIDE = 2000
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


_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_WS = re.compile(r"[ \t\u3000]+$", re.MULTILINE)
# Control characters other than tab and newline (NUL upsets databases, form feeds come from PDFs).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def normalize_text(text: str) -> str:
    """Unify newlines, strip trailing spaces, collapse runs of blank lines; keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_WS.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def decode_text(data: bytes, preferred: str | None = None) -> str:
    """Decode bytes as UTF-8 (with or without BOM), UTF-16 with a BOM, GB18030, then Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    candidates = [preferred] if preferred else []
    candidates += ["utf-8-sig", "gb18030"]
    for encoding in candidates:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("latin-1")


def _load_plain(data: bytes, stem: str, limits: LoadLimits) -> LoadedFile:
    return LoadedFile(title=stem, text=normalize_text(decode_text(data)), content_type="text/plain")


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX_H1 = re.compile(r"^\s{0,3}#[ \t]+(.+?)[ \t]*#*[ \t]*$")
_SETEXT_H1 = re.compile(r"^\s{0,3}=+[ \t]*$")


def _markdown_title(text: str) -> str | None:
    """The first level-1 heading (ATX ``# x`` or setext ``x\\n===``), ignoring fenced code."""
    in_fence = False
    previous = ""
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            previous = ""
            continue
        if in_fence:
            continue
        match = _ATX_H1.match(line)
        if match:
            return match.group(1).strip()
        if _SETEXT_H1.match(line) and previous.strip():
            return previous.strip()
        previous = line
    return None


def _load_markdown(data: bytes, stem: str, limits: LoadLimits) -> LoadedFile:
    text = normalize_text(decode_text(data))
    title: str | None = None
    front = _FRONT_MATTER.match(text)
    if front:
        # YAML front matter: take its title, drop it from the text (metadata, not content).
        try:
            import yaml

            meta = yaml.safe_load(front.group(1))
        except Exception:
            meta = None
        if isinstance(meta, dict):
            value = meta.get("title")
            if isinstance(value, str | int | float) and str(value).strip():
                title = str(value).strip()
            text = text[front.end() :].lstrip("\n")
    title = title or _markdown_title(text) or stem
    return LoadedFile(title=title, text=text, content_type="text/markdown")


# --------------------------------------------------------------------------------------------- HTML


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.IGNORECASE)

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form"}
_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "br", "li", "ul", "ol", "table", "tr", "td", "th",
    "blockquote", "pre", "hr", "dl", "dt", "dd", "figure", "figcaption",
    "h1", "h2", "h3", "h4", "h5", "h6",
}  # fmt: skip
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"}


class _HtmlScanner(HTMLParser):
    """Collects ``<title>``, the first ``<h1>`` and a tag-stripped text (the fallback body)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title_parts: list[str] = []
        self.h1_parts: list[str] = []
        self.h1_done = False
        self.parts: list[str] = []
        self._in_title = False
        self._in_h1 = False
        self._skip_depth = 0
        self._heading_level = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            if tag == "br":
                self.parts.append("\n")
            return
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
            return
        if tag == "title":
            self._in_title = True
        elif tag == "h1" and not self.h1_done:
            self._in_h1 = True
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"td", "th"} else " ")
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456" and not self._skip_depth:
            self._heading_level = int(tag[1])
            self.parts.append("#" * self._heading_level + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if tag == "title":
            self._in_title = False
        elif tag == "h1" and self._in_h1:
            self._in_h1 = False
            self.h1_done = bool("".join(self.h1_parts).strip())
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag not in {"td", "th"} else " ")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skip_depth:
            return
        if self._in_h1:
            self.h1_parts.append(data)
        self.parts.append(data)

    @property
    def title(self) -> str | None:
        for parts in (self.title_parts, self.h1_parts):
            value = " ".join("".join(parts).split())
            if value:
                return value
        return None

    @property
    def text(self) -> str:
        raw = "".join(self.parts)
        lines = [" ".join(line.split()) for line in raw.split("\n")]
        return normalize_text("\n".join(lines))


def _decode_html(data: bytes) -> str:
    match = _CHARSET.search(data[:4096])
    preferred = match.group(1).decode("ascii", "replace").lower() if match else None
    return decode_text(data, preferred)


def _load_html(data: bytes, stem: str, limits: LoadLimits) -> LoadedFile:
    html = _decode_html(data)
    scanner = _HtmlScanner()
    try:
        scanner.feed(html)
        scanner.close()
    except Exception as exc:  # HTMLParser is lenient; this is a safety net
        log.debug("html scan failed: %s", exc)

    text: str | None = None
    try:
        import trafilatura

        text = trafilatura.extract(
            html, include_tables=True, favor_recall=True, output_format="markdown", include_comments=False
        )
    except Exception as exc:
        log.debug("trafilatura failed on %s: %s", stem, exc)
    body = normalize_text(text) if text else ""
    if not body.strip():
        body = scanner.text
    return LoadedFile(title=scanner.title or stem, text=body, content_type="text/html")


# ---------------------------------------------------------------------------------------------- PDF


_BAD_PDF_TITLES = {"untitled", "untitled document", "untitled-1", "title", "document"}


def _load_pdf(data: bytes, stem: str, limits: LoadLimits) -> LoadedFile:
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
    ocr_text = _ocr_pdf_pages(pages, stem, limits) if pages else ""
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


def _ocr_pdf_pages(pages: list[Any], stem: str, limits: LoadLimits) -> str:
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
                text = ocr_image(page.images[image_id].image, limits)
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


def _load_docx(data: bytes, stem: str, limits: LoadLimits) -> LoadedFile:
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


_ocr_engine: Any = None
_ocr_init_lock = threading.Lock()
_ocr_run_lock = threading.Lock()


def _get_ocr_engine() -> Any:
    """The RapidOCR engine, built once on first use (loading its models takes about half a second)."""
    global _ocr_engine
    if _ocr_engine is None:
        with _ocr_init_lock:
            if _ocr_engine is None:
                from rapidocr_onnxruntime import RapidOCR

                _ocr_engine = RapidOCR()
    return _ocr_engine


def _reading_order(result: list[Any]) -> str:
    """Join OCR boxes into lines: top to bottom, then left to right within a line."""
    boxes: list[tuple[float, float, float, str]] = []  # (top, bottom, left, text)
    for box, text, _score in result:
        text = str(text).strip()
        if not text:
            continue
        ys = [float(point[1]) for point in box]
        xs = [float(point[0]) for point in box]
        boxes.append((min(ys), max(ys), min(xs), text))
    boxes.sort(key=lambda b: ((b[0] + b[1]) / 2, b[2]))

    lines: list[list[tuple[float, float, float, str]]] = []
    for item in boxes:
        centre = (item[0] + item[1]) / 2
        if lines:
            last = lines[-1]
            top = sum(b[0] for b in last) / len(last)
            bottom = sum(b[1] for b in last) / len(last)
            # Same line when this box's vertical centre falls inside the line's band.
            if top <= centre <= bottom:
                last.append(item)
                continue
        lines.append([item])
    return "\n".join(" ".join(b[3] for b in sorted(line, key=lambda b: b[2])) for line in lines)


def open_image(source: Any, limits: LoadLimits) -> Any:
    """A Pillow image of ``source`` (bytes, a path or a file) decoded within the pixel budget:
    the size is checked from the header before a pixel is decoded, and the image is shrunk to
    ``OCR_MAX_SIDE`` while decoding where the format allows it (JPEG)."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        raise OverBudget(f"image: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"cannot read image: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_image_pixels:
        image.close()
        raise OverBudget(
            f"image is {width}x{height} pixels; at most {limits.max_image_pixels:,} pixels are read"
        )
    try:
        if image.format == "JPEG":
            image.draft("RGB", (OCR_MAX_SIDE, OCR_MAX_SIDE))
        image.load()
    except Image.DecompressionBombError as exc:
        raise OverBudget(f"image: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"cannot read image: {exc}") from exc
    return image


def ocr_image(image: Any, limits: LoadLimits | None = None) -> str:
    """OCR a Pillow image (or a path / bytes, opened within ``limits``) and return its text in
    reading order ("" if none)."""
    from PIL import Image, ImageOps

    limits = limits or LoadLimits()
    if not isinstance(image, Image.Image):
        image = open_image(image, limits)
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise OverBudget(f"image is {width}x{height} pixels; at most {limits.max_image_pixels:,} are read")
    if max(width, height) > OCR_MAX_SIDE:
        image = image.copy()  # thumbnail() works in place; the caller's image stays as it was
        image.thumbnail((OCR_MAX_SIDE, OCR_MAX_SIDE))
    image = ImageOps.exif_transpose(image) or image
    if image.mode != "RGB":
        # Palette, CMYK, 16-bit and alpha images confuse RapidOCR's own conversion: hand it RGB,
        # with transparency flattened onto white.
        if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, "white")
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    engine = _get_ocr_engine()
    with _ocr_run_lock:
        result, _elapsed = engine(image)
    if not result:
        return ""
    return _reading_order(result)


def _load_image(data: bytes, stem: str, content_type: str, limits: LoadLimits) -> LoadedFile:
    image = open_image(data, limits)
    try:
        text = ocr_image(image, limits)
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"OCR failed: {exc}") from exc
    text = normalize_text(text)
    if not text:
        raise LoadError("no text found in image")
    return LoadedFile(title=stem, text=text, content_type=content_type)


# ------------------------------------------------------------------------------------------- entry


_LOADERS: dict[str, Callable[[bytes, str, LoadLimits], LoadedFile]] = {
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".txt": _load_plain,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
    ".png": lambda data, stem, limits: _load_image(data, stem, "image/png", limits),
    ".jpg": lambda data, stem, limits: _load_image(data, stem, "image/jpeg", limits),
    ".jpeg": lambda data, stem, limits: _load_image(data, stem, "image/jpeg", limits),
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
    data: bytes, filename: str, *, max_bytes: int | None = None, limits: LoadLimits | None = None
) -> LoadedFile:
    """Load a document held in memory (an upload, say); ``filename`` picks the loader by suffix.
    ``max_bytes``, when given, overrides ``limits.max_bytes``."""
    limits = _limits(max_bytes, limits)
    name = Path(filename)
    loader = _LOADERS.get(name.suffix.lower())
    if loader is None:
        raise UnsupportedFile(f"unsupported file type {name.suffix or '(no suffix)'!r}: {filename}")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"{filename} is {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        loaded = loader(data, name.stem, limits)
    except MemoryError as exc:
        # What the checks above did not foresee still ends as a refusal, not a dead process.
        raise OverBudget(f"{filename}: out of memory while reading it") from exc
    if len(loaded.text) > limits.max_text_chars:
        loaded = replace(loaded, text=_cap_text(loaded.text, limits, name.stem))
    return loaded


def load_file(path: Path, *, max_bytes: int | None = None, limits: LoadLimits | None = None) -> LoadedFile:
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
    return load_bytes(data, path.name, limits=limits)
