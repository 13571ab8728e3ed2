"""Media in a chat request, decoded and checked: data URLs, the real type of an image (from its
header, by :mod:`omnirag.extract`, with its pixel cap) or a video (from its container's first bytes),
and the text OCR reads in an image. Errors are the gateway's HTTP errors.

Error codes (stable): ``invalid_image`` / ``invalid_video`` (422: bad data URL, bad base64, not a
PNG/JPEG/WebP/GIF image, not an MP4/QuickTime/WebM/Matroska/AVI video), ``image_too_large`` /
``video_too_large`` (413), ``ocr_busy`` (429), ``ocr_failed`` (500).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from omnirag.core.errors import InvalidInput, OmniragError, Overloaded, PayloadTooLarge
from omnirag.extract import DEFAULT_MAX_PIXELS, OCR, ImageError, OCRBusy, OCRFailed, TooManyPixels
from omnirag.extract import image_mime as _image_mime

__all__ = ["DATA_URL", "data_url_mime", "decode_data_url", "image_mime", "ocr_text", "video_mime"]

MediaKind = Literal["image", "video"]

DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),", re.IGNORECASE)


@contextmanager
def _http_errors() -> Iterator[None]:
    """omnirag.extract's errors as the gateway answers them."""
    try:
        yield
    except TooManyPixels as exc:
        raise PayloadTooLarge(str(exc), code="image_too_large") from exc
    except ImageError as exc:
        raise InvalidInput(str(exc), code="invalid_image") from exc
    except OCRBusy as exc:
        raise Overloaded(str(exc), code="ocr_busy", retry_after=2) from exc
    except OCRFailed as exc:
        raise OmniragError(str(exc), code="ocr_failed") from exc


def image_mime(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "the image") -> str:
    """MIME type of image bytes, read from the header only; raises InvalidInput / PayloadTooLarge."""
    with _http_errors():
        return _image_mime(data, max_pixels, what)


async def ocr_text(ocr: OCR, data: bytes) -> str:
    """The text OCR reads in image bytes ("" when none); raises InvalidInput / PayloadTooLarge for
    the image, Overloaded when too many images wait."""
    with _http_errors():
        return await ocr.read(data)


def video_mime(data: bytes) -> str | None:
    """The MIME type of a video container read from its first bytes, None when it is none of
    MP4 / QuickTime (an ISO ``ftyp`` box), WebM / Matroska (EBML) or AVI (RIFF)."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:10] == b"qt" else "video/mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm" if b"webm" in data[:64] else "video/x-matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video/x-msvideo"
    return None


def data_url_mime(url: str) -> str | None:
    """The type a data URL declares (lower case), None for a URL that is not one."""
    match = DATA_URL.match(url)
    return (match.group("mime") or "").lower() if match else None


def decode_data_url(url: str, what: str, max_bytes: int, kind: MediaKind = "image") -> bytes:
    """The bytes of a ``data:<kind>/...;base64,`` URL, refused past ``max_bytes`` from its length
    alone (an oversized image or video is never decoded)."""
    code = f"invalid_{kind}"
    match = DATA_URL.match(url)
    if match is None:
        raise InvalidInput(f"{what}: malformed data URL", code=code)
    mime = (match.group("mime") or "").lower()
    params = [p.strip().lower() for p in match.group("params").split(";") if p.strip()]
    if not mime.startswith(kind + "/"):
        raise InvalidInput(f"{what}: the data URL is {mime or 'untyped'}, not {kind}/...", code=code)
    if "base64" not in params:
        raise InvalidInput(f"{what}: only base64 data URLs are accepted", code=code)
    payload = "".join(url[match.end() :].split())
    if len(payload) * 3 // 4 - payload[-2:].count("=") > max_bytes:
        raise PayloadTooLarge(
            f"{what} is larger than {max_bytes:,} bytes (GATEWAY_MAX_{kind.upper()}_BYTES)",
            code=f"{kind}_too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput(f"{what}: the data URL is not valid base64", code=code) from exc
    if not data:
        raise InvalidInput(f"{what}: the data URL is empty", code=code)
    return data
