"""Checking and decoding image bytes: formats, the pixel cap read from the header, alpha, EXIF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from omnirag.extract.images import (
    CorruptImage,
    NotAnImage,
    TooManyPixels,
    decode_rgb,
    image_mime,
    open_image,
    pad_for_detection,
    to_rgb,
)


def test_the_accepted_formats_are_read_from_the_bytes(render) -> None:
    for fmt, mime in (
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
    ):
        assert image_mime(render(["x"], fmt=fmt)) == mime


def test_other_bytes_and_formats_are_refused(render) -> None:
    with pytest.raises(NotAnImage, match="not an image"):
        image_mime(b"%PDF-1.7 definitely not an image")
    bmp = io.BytesIO()
    Image.new("RGB", (10, 10)).save(bmp, "BMP")
    with pytest.raises(NotAnImage, match="BMP image; send PNG, JPEG, WebP or GIF"):
        decode_rgb(bmp.getvalue())
    with pytest.raises(CorruptImage, match="cannot be decoded"):
        decode_rgb(render(["cut short"])[:300])


def test_the_pixel_cap_holds_before_anything_is_decoded(render) -> None:
    # 8000 x 8000 white pixels: a few KB of PNG, 192 MB once decoded
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 30_000
    with pytest.raises(TooManyPixels, match="8000x8000 pixels; at most 36,000,000"):
        decode_rgb(bomb.getvalue())
    with pytest.raises(TooManyPixels, match="the scan is 900x104 pixels; at most 10,000"):
        open_image(render(["x"]), max_pixels=10_000, what="the scan")


def test_decode_shrinks_large_images_and_flattens_alpha() -> None:
    big = io.BytesIO()
    Image.new("RGBA", (4000, 1000), (0, 0, 0, 0)).save(big, "PNG")
    pixels = decode_rgb(big.getvalue())
    assert pixels.shape == (500, 2000, 3)
    assert pixels.min() == 255  # transparent became white, not black


def test_every_mode_becomes_rgb_and_exif_turns_the_image_upright() -> None:
    for mode in ("RGBA", "P", "L", "1", "CMYK", "LA", "I;16"):
        assert to_rgb(Image.new(mode, (12, 8))).shape == (8, 12, 3), mode
    palette = Image.new("P", (4, 4), 1)
    palette.info["transparency"] = 1
    assert to_rgb(palette).min() == 255  # a transparent palette entry is white too
    sideways = Image.new("RGB", (30, 10), "white")
    exif = sideways.getexif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", exif=exif)
    assert decode_rgb(buffer.getvalue()).shape == (30, 10, 3)


def test_padding_for_the_detector_uses_the_background() -> None:
    pixels = np.full((100, 900, 3), 250, dtype=np.uint8)
    padded = pad_for_detection(pixels)
    assert padded.shape == (736, 900, 3) and padded.min() == 250
    assert pad_for_detection(np.zeros((800, 800, 3), dtype=np.uint8)).shape == (800, 800, 3)
