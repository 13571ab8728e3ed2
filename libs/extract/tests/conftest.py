"""Images rendered here with Pillow, read by the real RapidOCR engine from its package."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from omnirag.extract import OCR

FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_PATHS:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)  # scalable in Pillow >= 10.1


def _render(
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


Render = Callable[..., bytes]


@pytest.fixture(scope="session")
def render() -> Render:
    """``render(lines, fmt="PNG", size=36, mode="RGB", width=900, angle=0) -> image bytes``."""
    return _render


@pytest.fixture(scope="session")
def ocr() -> Iterator[OCR]:
    engine = OCR()
    yield engine
    engine.close()
