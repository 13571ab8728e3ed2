"""omnirag.extract: content extraction shared by the gateway (images in questions) and the indexer
(files and crawled pages), so that the same picture or page gives the same text on both paths.

- :mod:`~omnirag.extract.images`: image bytes checked (format, pixel cap from the header) and decoded;
- :mod:`~omnirag.extract.ocr`: :class:`OCR`, RapidOCR with a lifecycle, and the box-to-line grouping;
- :mod:`~omnirag.extract.text`: bytes to text (BOM, declared charset, UTF-16, UTF-8, GB18030);
- :mod:`~omnirag.extract.html`: HTML to title, main text and links;
- :mod:`~omnirag.extract.markdown`: Markdown titles and front matter.
"""

from omnirag.extract.html import HtmlDocument, html_document
from omnirag.extract.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    CorruptImage,
    ImageError,
    NotAnImage,
    TooManyPixels,
    decode_rgb,
    image_mime,
)
from omnirag.extract.markdown import MarkdownDocument, markdown_document, markdown_title
from omnirag.extract.ocr import OCR, OCRBusy, OCRFailed, reading_order
from omnirag.extract.text import charset_of, decode_text, is_html, mime_of, normalize_text

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "OCR",
    "CorruptImage",
    "HtmlDocument",
    "ImageError",
    "MarkdownDocument",
    "NotAnImage",
    "OCRBusy",
    "OCRFailed",
    "TooManyPixels",
    "charset_of",
    "decode_rgb",
    "decode_text",
    "html_document",
    "image_mime",
    "is_html",
    "markdown_document",
    "markdown_title",
    "mime_of",
    "normalize_text",
    "reading_order",
]
