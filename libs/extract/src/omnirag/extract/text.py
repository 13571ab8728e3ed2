"""Bytes to text, and text tidied for splitting.

:func:`decode_text` is the one decoder of documents, whether read from disk, uploaded or crawled:
a file and the same page served over HTTP give the same text. The order follows what browsers do
(the WHATWG encoding rules), with fallbacks for files that declare nothing:

1. a byte order mark (UTF-8, UTF-16 LE/BE) wins over anything declared;
2. the charset declared by the HTTP ``Content-Type`` header, then (HTML only) by a ``<meta>`` tag in
   the first 4 KB; GB2312 and GBK labels read as GB18030, their superset (as browsers read them);
   a declaration the bytes do not fit is passed over;
3. UTF-16 without a BOM (every other byte NUL in mostly-ASCII text);
4. UTF-8; 5. GB18030 (Chinese pages and files that declare nothing); 6. Latin-1, which never fails.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["HTML_TYPES", "charset_of", "decode_text", "is_html", "mime_of", "normalize_text"]

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_META_SNIFF_BYTES = 4096
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
# Labels read as another codec: GBK's family as GB18030 (a superset: a page declared gb2312 often
# holds GBK characters), Latin-1's as Windows-1252 (curly quotes in 0x80-0x9f), as browsers do.
_ALIASES = {
    **dict.fromkeys(("gb2312", "gbk", "x-gbk", "cp936", "csgb2312", "gb_2312-80", "chinese"), "gb18030"),
    **dict.fromkeys(("iso-8859-1", "iso8859-1", "latin1", "latin-1", "us-ascii", "ascii"), "cp1252"),
}
# A single-byte declaration is kept even where the bytes miss its table: the next try is Latin-1,
# never a guess at a multi-byte codec that would turn accents into Chinese.
_SINGLE_BYTE_FALLBACK = {"cp1252": "latin-1"}


def mime_of(content_type: str | None) -> str:
    """``text/html`` of ``text/html; charset=utf-8``, lower case ("" for None)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_html(content_type: str | None) -> bool:
    return mime_of(content_type) in HTML_TYPES


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a ``Content-Type`` value, if any."""
    match = _HEADER_CHARSET.search(content_type or "")
    return match.group(1) if match else None


def _codec(label: str) -> str | None:
    """Python's codec name for a charset label; None for an unknown one."""
    label = label.strip().strip("\"'").lower()
    label = _ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _utf16_without_bom(data: bytes) -> str | None:
    sample = data[:1024]
    if len(sample) < 8:
        return None
    half = len(sample) // 2
    even = sample[0::2].count(0)
    odd = sample[1::2].count(0)
    if odd >= half * 0.4 and even <= half * 0.05:
        return "utf-16-le"
    if even >= half * 0.4 and odd <= half * 0.05:
        return "utf-16-be"
    return None


def decode_text(data: bytes, content_type: str | None = None) -> str:
    """Decode document bytes (see the module doc). ``content_type``: the HTTP header's value, or the
    type a file's suffix gives (``text/html`` makes the ``<meta>`` charset count)."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    declared = [charset_of(content_type)]
    if is_html(content_type):
        found = _META_CHARSET.search(data[:_META_SNIFF_BYTES])
        declared.append(found.group(1).decode("ascii") if found else None)
    candidates: list[str] = []
    for label in declared:
        codec = _codec(label) if label else None
        if codec is not None:
            candidates.append(codec)
            if codec in _SINGLE_BYTE_FALLBACK:
                candidates.append(_SINGLE_BYTE_FALLBACK[codec])
                break
    utf16 = _utf16_without_bom(data)
    candidates += [utf16] if utf16 else []
    candidates += ["utf-8", "gb18030"]
    for codec in candidates:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


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
