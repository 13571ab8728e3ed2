"""OCR: RapidOCR (PP-OCRv4, Chinese + English) as an object with a lifecycle.

The caller makes one :class:`OCR` for as long as it reads images (the gateway in its lifespan, the
indexer once per run or worker) and closes it at the end; nothing is module-global. The engine is
created on first use (loading takes about a second; :meth:`OCR.load` does it ahead of time).

Recognition is CPU-bound and not cheap (a second or more per image on two cores), so it runs on one
worker thread: images are read one at a time whoever asks. An event loop awaits :meth:`OCR.read`,
which refuses (:class:`OCRBusy`) when ``max_pending`` images already wait, rather than queue without
bound; a thread calls :meth:`OCR.read_bytes` or :meth:`OCR.read_image` (a Pillow image, e.g. a PDF
page's), which wait their turn. Every path decodes with :mod:`omnirag.extract.images` (pixel cap,
upright RGB, alpha on white), pads for the detector and groups boxes into lines with
:func:`reading_order`: the same picture gives the same text in a chat and in an index.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from omnirag.extract.images import (
    DEFAULT_MAX_PIXELS,
    OCR_MAX_SIDE,
    check_pixels,
    decode_rgb,
    pad_for_detection,
    to_rgb,
)

__all__ = ["OCR", "OCR_MAX_PENDING", "OCRBusy", "OCRFailed", "reading_order"]

log = logging.getLogger(__name__)

OCR_MAX_PENDING = 16

_T = TypeVar("_T")


class OCRBusy(Exception):
    """Too many images wait for recognition; try again shortly."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"{pending} images are waiting for OCR; try again shortly")
        self.pending = pending


class OCRFailed(Exception):
    """The engine failed on an image that decoded fine (a bug or resource problem, not the input)."""


def reading_order(result: Iterable[Any]) -> str:
    """RapidOCR boxes ``(points, text, score)`` as text: lines top to bottom (joined by newlines),
    boxes left to right within a line (joined by spaces); blank boxes are dropped.

    A box joins the line above when its vertical centre falls inside the line's band, the *mean*
    top and bottom of the boxes already in it. A band of the line's first box alone breaks a slightly
    tilted table into pieces (a photo taken at 4 degrees: the cells right of the first column sit
    higher); the mean follows the tilt while the boxes come in.
    """
    boxes: list[tuple[float, float, float, str]] = []  # (top, bottom, left, text)
    for box, text, _score in result:
        text = str(text).strip()
        if not text:
            continue
        ys = [float(point[1]) for point in box]
        xs = [float(point[0]) for point in box]
        boxes.append((min(ys), max(ys), min(xs), text))
    boxes.sort(key=lambda b: ((b[0] + b[1]) / 2, b[2]))

    lines: list[list[tuple[float, float, float, str]]] = []
    for item in boxes:
        centre = (item[0] + item[1]) / 2
        if lines:
            last = lines[-1]
            top = sum(b[0] for b in last) / len(last)
            bottom = sum(b[1] for b in last) / len(last)
            if top <= centre <= bottom:
                last.append(item)
                continue
        lines.append([item])
    return "\n".join(" ".join(b[3] for b in sorted(line, key=lambda b: b[2])) for line in lines)


class OCR:
    """RapidOCR behind one worker thread (see the module doc).

    ``max_pixels`` caps every image read (a call may lower it); ``max_pending`` bounds the images
    that wait for :meth:`read`; ``engine_options`` go to ``RapidOCR(**engine_options)`` (e.g.
    ``det_limit_type="max"`` trades accuracy on small text for speed on wide images).
    """

    def __init__(
        self,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_pending: int = OCR_MAX_PENDING,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.max_pixels = max_pixels
        self.max_pending = max_pending
        self._options = dict(engine_options or {})
        self._engine: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnirag-ocr")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Images waiting for or in recognition."""
        return self._pending

    # ---- on the worker thread

    def _get_engine(self) -> Any:
        # Only ever called on the executor's one thread: no lock needed around the creation.
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR  # imports onnxruntime and cv2: slow, so lazy

            self._engine = RapidOCR(**self._options)
        return self._engine

    def _recognise(self, pixels: np.ndarray) -> str:
        try:
            result, _elapsed = self._get_engine()(pad_for_detection(pixels))
        except Exception as exc:
            log.exception("OCR failed")
            raise OCRFailed(f"OCR failed: {type(exc).__name__}") from exc
        return reading_order(result or [])

    def _recognise_bytes(self, data: bytes, max_pixels: int, what: str) -> str:
        return self._recognise(decode_rgb(data, max_pixels, OCR_MAX_SIDE, what))

    def _recognise_image(self, image: Image.Image, max_pixels: int) -> str:
        check_pixels(image, max_pixels)
        return self._recognise(to_rgb(image, OCR_MAX_SIDE))

    # ---- submitting

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    def _submit(self, fn: Callable[..., _T], *args: Any, bounded: bool) -> Future[_T]:
        with self._lock:
            if bounded and self._pending >= self.max_pending:
                raise OCRBusy(self._pending)
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:  # closed executor
            with self._lock:
                self._pending -= 1
            raise
        # Counted down when the job ends or is cancelled before it starts (the caller went away).
        future.add_done_callback(self._done)
        return future

    def _cap(self, max_pixels: int | None) -> int:
        return self.max_pixels if max_pixels is None else min(max_pixels, self.max_pixels)

    async def load(self) -> None:
        """Create the engine now rather than on the first image."""
        await asyncio.wrap_future(self._submit(self._get_engine, bounded=True))

    async def read(self, data: bytes, *, what: str = "the image") -> str:
        """The text of image bytes, lines top to bottom ("" when none is found), from an event loop.

        Raises :class:`~omnirag.extract.images.ImageError` for bytes that are not a PNG / JPEG /
        WebP / GIF image or have too many pixels, :class:`OCRBusy` when ``max_pending`` images
        already wait, :class:`OCRFailed` when the engine fails.
        """
        return await asyncio.wrap_future(
            self._submit(self._recognise_bytes, data, self.max_pixels, what, bounded=True)
        )

    def read_bytes(self, data: bytes, *, max_pixels: int | None = None, what: str = "the image") -> str:
        """:meth:`read` for a thread: waits its turn instead of refusing. ``max_pixels`` may lower the cap."""
        return self._submit(self._recognise_bytes, data, self._cap(max_pixels), what, bounded=False).result()

    def read_image(self, image: Image.Image, *, max_pixels: int | None = None) -> str:
        """The text of a decoded Pillow image of any mode (a PDF's page image), from a thread."""
        return self._submit(self._recognise_image, image, self._cap(max_pixels), bounded=False).result()

    def close(self) -> None:
        """Stop the worker thread; queued images are dropped, a running one finishes."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> OCR:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
