"""Bytes to text: one decoder for files on disk and pages off the network."""

from __future__ import annotations

import codecs

import pytest

from omnirag.extract.text import charset_of, decode_text, normalize_text

CHINESE = "检索增强生成（RAG）把检索到的段落交给大模型。第二段：向量数据库。"
# 镕 is in GBK and GB18030, not in GB2312; 𠀀 (U+20000) is only in GB18030 (four bytes).
BEYOND_GB2312 = "朱镕基与𠀀"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (codecs.BOM_UTF8 + "hello wörld".encode(), "hello wörld"),
        ("hello utf-16 ✓".encode("utf-16"), "hello utf-16 ✓"),  # BOM, native order
        (codecs.BOM_UTF16_BE + "big endian ✓".encode("utf-16-be"), "big endian ✓"),
        ("no BOM, plain ASCII in UTF-16".encode("utf-16-le"), "no BOM, plain ASCII in UTF-16"),
        ("no BOM, big endian".encode("utf-16-be"), "no BOM, big endian"),
        ("naïve café ✓".encode(), "naïve café ✓"),
        (CHINESE.encode("gb18030"), CHINESE),  # declares nothing: GB18030 after UTF-8
        (BEYOND_GB2312.encode("gb18030"), BEYOND_GB2312),
        ("café au lait, déjà vu".encode("latin-1"), "café au lait, déjà vu"),  # the last resort
        (b"", ""),
    ],
)
def test_undeclared_bytes(data: bytes, expected: str) -> None:
    assert decode_text(data) == expected


def test_a_declared_charset_is_read_from_the_header_then_the_meta_tag() -> None:
    page = f"<html><head><meta charset='gbk'><title>知识库</title></head><body>{BEYOND_GB2312}</body></html>"
    data = page.encode("gb18030")
    assert decode_text(data, "text/html") == page  # gbk read as its superset GB18030
    assert decode_text(data, "text/html; charset=GB2312") == page
    assert decode_text(data, "text/plain") == page  # no meta sniffing outside HTML: falls back
    meta = '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"><p>Crème brûlée'
    assert decode_text(meta.encode("latin-1"), "application/xhtml+xml") == meta
    # Latin-1 is read as Windows-1252, as browsers do: curly quotes, not control characters
    assert decode_text(b"\x93quoted\x94", "text/plain; charset=ISO-8859-1") == "\u201cquoted\u201d"
    # a byte Windows-1252 lacks stays a Latin-1 character, never a guess at Chinese
    assert decode_text(b"caf\xe9 \x81", "text/plain; charset=latin1") == "café \x81"


def test_a_byte_order_mark_wins_and_a_declaration_the_bytes_do_not_fit_is_passed_over() -> None:
    assert decode_text(codecs.BOM_UTF8 + "中文".encode(), "text/html; charset=gb18030") == "中文"
    assert decode_text(CHINESE.encode("gb18030"), "text/html; charset=utf-8") == CHINESE
    assert decode_text("中文".encode(), "text/plain; charset=no-such-codec") == "中文"


def test_charset_of_a_content_type() -> None:
    assert charset_of("text/html; charset=UTF-8") == "UTF-8"
    assert charset_of('text/html; charset="gb2312"') == "gb2312"
    assert charset_of("text/html") is None and charset_of(None) is None


def test_normalize_text() -> None:
    raw = "a  \r\nb\t\n\n\n\ncd\x00\f e\u3000\n"
    assert normalize_text(raw) == "a\nb\n\ncd\n\n e"
    assert normalize_text("x\n    code\n") == "x\n    code"
