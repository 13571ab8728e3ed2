"""OCR with the real RapidOCR engine: the event-loop path (the gateway's) and the thread paths (the
indexer's files and PDF page images) give the same text for the same picture."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from PIL import Image

from omnirag.extract import OCR, NotAnImage, OCRBusy, TooManyPixels, reading_order

SENTENCE = "The gateway listens on port 8000"
TABLE = [
    "Service        Port        Replicas",
    "gateway        8000        2",
    "retriever      8002        3",
    "embedder       8001        1",
]


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def lines(text: str) -> list[str]:
    return [norm(line) for line in text.splitlines()]


async def test_the_same_image_gives_the_same_text_on_every_path(ocr, render):
    png = render(["Retriever port 8002", "Embedder port 8001"])
    from_loop = await ocr.read(png)  # the gateway: a question's image
    from_thread = await asyncio.to_thread(ocr.read_bytes, png)  # the indexer: an image file
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        from_pillow = await asyncio.to_thread(ocr.read_image, image)  # the indexer: a PDF's page image
    assert lines(from_loop) == ["retriever port 8002", "embedder port 8001"]
    assert from_thread == from_loop and from_pillow == from_loop
    assert ocr.pending == 0


async def test_one_line_transparent_and_jpeg_images(ocr, render):
    assert norm(await ocr.read(render([SENTENCE]))) == norm(SENTENCE)
    transparent = render(["Retriever port 8002", "Embedder port 8001"], mode="RGBA")
    assert lines(await ocr.read(transparent)) == ["retriever port 8002", "embedder port 8001"]
    assert norm(await ocr.read(render(["Redis keeps history"], fmt="JPEG"))) == "redis keeps history"
    blank = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(blank, "PNG")
    assert await ocr.read(blank.getvalue()) == ""


async def test_a_slightly_turned_table_keeps_its_rows(ocr, render):
    # A photo of a table taken at 4 degrees: every row's cells right of the first column sit higher
    # than its first cell. Grouping on the first box of a line split each row in two.
    text = await ocr.read(render(TABLE, size=24, width=1100, angle=4))
    assert lines(text) == [norm(row) for row in TABLE]


def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_boxes_are_grouped_into_lines_in_reading_order():
    assert (
        reading_order(
            [
                (box(300, 52, 350, 72), "second", 0.9),
                (box(10, 50, 60, 70), "first", 0.9),
                (box(10, 10, 60, 30), "title", 0.9),
                (box(10, 90, 60, 108), "last", 0.9),
                (box(200, 92, 250, 112), " ", 0.9),  # blank text is dropped
            ]
        )
        == "title\nfirst second\nlast"
    )
    assert (
        reading_order(
            [
                (box(400, 12, 600, 48), "right", 0.9),  # same line as "left", a little higher
                (box(10, 100, 200, 140), "second", 0.9),
                (box(10, 10, 200, 50), "left", 0.9),
            ]
        )
        == "left right\nsecond"
    )
    # The boxes RapidOCR found in the turned table above (one row): "2" sits highest, then "8000",
    # then the row's first cell, whose centre is below the band of "2" alone.
    row = [
        (box(318, 118, 341, 149), "2", 0.9),
        (box(195, 121, 263, 155), "8000", 0.9),
        (box(33, 131, 143, 171), "gateway", 0.9),
        (box(184, 166, 252, 198), "8002", 0.9),
    ]
    assert reading_order(row) == "gateway 8000 2\n8002"


async def test_errors_of_the_image_and_the_pixel_cap(ocr, render):
    with pytest.raises(NotAnImage, match="not an image"):
        await ocr.read(b"%PDF-1.7 definitely not an image")
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(bomb, "PNG")
    with pytest.raises(TooManyPixels, match="8000x8000 pixels"):
        await ocr.read(bomb.getvalue())
    # a caller's lower cap (the indexer's INDEXER_MAX_IMAGE_PIXELS) holds on the thread paths
    png = render(["x"])
    with pytest.raises(TooManyPixels, match="900x104 pixels; at most 50,000"):
        ocr.read_bytes(png, max_pixels=50_000)
    with Image.open(io.BytesIO(png)) as image, pytest.raises(TooManyPixels, match="at most 50,000"):
        ocr.read_image(image, max_pixels=50_000)
    assert ocr.pending == 0


async def test_the_queue_of_the_event_loop_path_is_bounded(ocr, render):
    png = render([SENTENCE])
    ocr.max_pending = 1
    try:
        results = await asyncio.gather(ocr.read(png), ocr.read(png), return_exceptions=True)
    finally:
        ocr.max_pending = 16
    assert norm(str(results[0])) == norm(SENTENCE)
    assert isinstance(results[1], OCRBusy) and results[1].pending == 1
    assert ocr.pending == 0


def test_threads_wait_their_turn_instead_of_being_refused(ocr, render):
    png = render(["Redis keeps history"])
    ocr.max_pending = 1
    results: list[str] = []
    try:
        workers = [threading.Thread(target=lambda: results.append(ocr.read_bytes(png))) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        ocr.max_pending = 16
    assert [norm(r) for r in results] == ["redis keeps history"] * 3


async def test_each_ocr_object_owns_its_engine_until_closed(render):
    with OCR() as first:
        await first.load()
        engine = first._engine
        await first.read(render(["x"]))
        assert first._engine is engine  # built once, reused
        with OCR() as second:
            assert second._engine is None  # nothing shared between objects
    with pytest.raises(RuntimeError):  # closed: its thread is gone
        await first.read(render(["x"]))
    assert first.pending == 0
