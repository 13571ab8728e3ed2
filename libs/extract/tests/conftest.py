"""Images rendered here with Pillow, read by the real RapidOCR engine from its package."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from omnirag_harness.images import text_image

from omnirag.extract import OCR

Render = Callable[..., bytes]


@pytest.fixture(scope="session")
def render() -> Render:
    """``render(lines, fmt="PNG", size=36, mode="RGB", width=900, angle=0) -> image bytes``."""
    return text_image


@pytest.fixture(scope="session")
def ocr() -> Iterator[OCR]:
    engine = OCR()
    yield engine
    engine.close()
