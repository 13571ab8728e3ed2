"""Test images rendered with Pillow: lines of black text for the real OCR engine to read."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_PATHS:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)  # scalable in Pillow >= 10.1


def text_image(
    lines: list[str],
    fmt: str = "PNG",
    size: int = 36,
    mode: str = "RGB",
    width: int = 900,
    angle: float = 0,
) -> bytes:
    """Black text on white (or on transparent, mode RGBA), one line per entry, optionally turned."""
    background = (255, 255, 255, 0) if mode == "RGBA" else "white"
    height = 40 + int(size * 1.8) * len(lines)
    image = Image.new(mode, (width, height), background)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((30, 20 + i * int(size * 1.8)), line, fill="black", font=font(size))
    if angle:
        image = image.rotate(angle, expand=True, fillcolor=background)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()
