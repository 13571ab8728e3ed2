"""Image bytes checked, then decoded for reading.

An image is hostile until read: its format and pixel count are checked from the header before a
single pixel is decoded, so a decompression bomb (a few KB of PNG that decodes to gigabytes) is
refused from its first bytes. Decoding gives an upright RGB array with transparency flattened onto
white (text drawn on a transparent background would otherwise turn black on black), shrunk to the
side the OCR detector works at anyway.

Errors: :class:`NotAnImage` (unknown or unaccepted format), :class:`TooManyPixels` (over the cap,
from the header), :class:`CorruptImage` (truncated or corrupt pixel data); all are
:class:`ImageError`. Callers turn them into their own errors (an HTTP status, a load error).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DET_MIN_SIDE",
    "IMAGE_FORMATS",
    "OCR_MAX_SIDE",
    "CorruptImage",
    "ImageError",
    "NotAnImage",
    "TooManyPixels",
    "check_pixels",
    "decode_rgb",
    "image_mime",
    "open_image",
    "pad_for_detection",
    "to_rgb",
]

# Pillow format name -> MIME type of the formats accepted: what vision models and OCR both take.
# Every other Pillow plugin stays unused, which keeps the decoders an upload can reach few.
IMAGE_FORMATS: Mapping[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
# 6000 x 6000: a photo or an 8K screenshot passes; a bomb is refused from its header.
DEFAULT_MAX_PIXELS = 36_000_000
# RapidOCR shrinks anything larger to this side before detection; shrinking while decoding instead
# keeps the RGB array small (a 36 MP image would be 108 MB).
OCR_MAX_SIDE = 2000
# RapidOCR's detector scales an image so that its *shorter* side is 736 px: a 900x105 screenshot of
# one line becomes 6300x736, and detection takes seconds. Padding the short side to 736 px with the
# background colour instead gives the detector the same size to work with at native scale. Measured
# on rendered text (14-48 px, one line to a page): 2-3x faster, same character accuracy (100%).
DET_MIN_SIDE = 736

_ACCEPTED = "PNG, JPEG, WebP or GIF"


class ImageError(Exception):
    """The bytes cannot be read as an image within the budget; the message says why."""


class NotAnImage(ImageError):
    """Not an image, or one in a format that is not accepted."""


class TooManyPixels(ImageError):
    """More pixels than the cap allows (read from the header: nothing was decoded)."""


class CorruptImage(ImageError):
    """The header passed, the pixel data is truncated or corrupt."""


def check_pixels(image: Image.Image, max_pixels: int, what: str = "the image") -> None:
    """Raise :class:`TooManyPixels` when ``image`` (its header's size) has more than ``max_pixels``."""
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(f"{what} is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted")


def open_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    what: str = "the image",
    formats: Mapping[str, str] = IMAGE_FORMATS,
) -> Image.Image:
    """A Pillow image of ``data`` with its header checked (format, pixel count); nothing decoded yet.

    The caller closes it (``with open_image(...) as image``).
    """
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise NotAnImage(f"{what} is not an image (send {_ACCEPTED})") from exc
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"{what}: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise NotAnImage(f"{what} cannot be read as an image: {exc}") from exc
    if image.format not in formats:
        image.close()
        raise NotAnImage(f"{what} is a {image.format} image; send {_ACCEPTED}")
    try:
        check_pixels(image, max_pixels, what)
    except TooManyPixels:
        image.close()
        raise
    return image


def image_mime(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "the image") -> str:
    """MIME type of image bytes, read from the header only (the declared type is not trusted)."""
    with open_image(data, max_pixels, what) as image:
        return IMAGE_FORMATS[str(image.format)]


def to_rgb(image: Image.Image, max_side: int = OCR_MAX_SIDE) -> np.ndarray:
    """RGB array (height, width, 3) of a decoded Pillow image of any mode: upright (EXIF), alpha
    flattened onto white, shrunk to ``max_side``."""
    upright = ImageOps.exif_transpose(image) or image
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        rgba = upright.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        rgb = flat.convert("RGB")
    else:
        rgb = upright.convert("RGB")  # palette, CMYK, grey, 16-bit: RapidOCR's own conversion trips
    rgb.thumbnail((max_side, max_side))
    return np.asarray(rgb)


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = OCR_MAX_SIDE, what: str = "the image"
) -> np.ndarray:
    """RGB array of PNG / JPEG / WebP / GIF bytes (first frame), checked by :func:`open_image`, then
    decoded by :func:`to_rgb`. CPU work: call it off an event loop."""
    with open_image(data, max_pixels, what) as image:
        try:
            if image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))  # decode at a reduced scale: far less work
            image.load()
            return to_rgb(image, max_side)
        except Image.DecompressionBombError as exc:
            raise TooManyPixels(f"{what}: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
            raise CorruptImage(f"{what} cannot be decoded: {exc}") from exc


def pad_for_detection(pixels: np.ndarray, min_side: int = DET_MIN_SIDE) -> np.ndarray:
    """``pixels`` with its short side(s) padded to ``min_side`` in the colour of its corners."""
    height, width = pixels.shape[:2]
    if height >= min_side and width >= min_side:
        return pixels
    corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]]
    padded = np.empty((max(height, min_side), max(width, min_side), 3), dtype=pixels.dtype)
    padded[:] = np.median(corners, axis=0).astype(pixels.dtype)
    padded[:height, :width] = pixels
    return padded
