"""Multimodal chat input: validate OpenAI chat messages, load their images, read them by OCR when the
model cannot see, and say what the retrieval query is.

Images come as ``image_url`` parts: ``data:image/...;base64,...`` URLs are decoded; http(s) URLs are
fetched here, through :mod:`omnirag.core.netguard` (private, loopback and metadata addresses refused
unless the host is in ``GATEWAY_IMAGE_FETCH_ALLOW_HOSTS``, the checked address pinned for the
connection), streamed with a size cap and a deadline. The model never fetches anything itself: to a
model that sees (``vision`` in its registry entry) fetched images go on as data URLs. For a text-only
model every image is read by :class:`OCR` and its text joins the message it came in.
``input_audio`` parts go only to a model that takes ``audio``; ``video_url`` parts (vLLM's shape)
only to one that takes ``video``, loaded like images (data: URL or fetched http(s), capped at
``GATEWAY_MAX_VIDEO_BYTES``, the container checked from its first bytes) and sent on as data URLs.
Which model answers is the registry's choice (:mod:`omnirag.gateway.registry`), made before this.

Error codes (stable): ``too_many_messages``, ``message_too_long``, ``request_too_long``,
``too_many_images``, ``too_many_videos``, ``invalid_message``, ``unsupported_content`` (422,
InvalidInput); ``invalid_image`` / ``invalid_video`` (422: bad data URL, bad base64, not a
PNG/JPEG/WebP/GIF image, not an MP4/QuickTime/WebM/Matroska/AVI video); ``image_too_large`` /
``video_too_large`` (413, PayloadTooLarge); ``image_url_refused``, ``image_fetch_failed``,
``video_url_refused``, ``video_fetch_failed``, ``audio_unsupported`` (400, BadRequest); ``ocr_busy``
(429, Overloaded).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omnirag.core.errors import BadRequest, InvalidInput, OmniragError, Overloaded, PayloadTooLarge
from omnirag.core.netguard import (
    AddressGuard,
    PinnedTransport,
    RefusedURL,
    ResolveError,
    Resolver,
    url_refusal,
)
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.registry import PART_CAPABILITY, ModelSpec, single

log = logging.getLogger(__name__)

# Pillow format name -> MIME type of the formats accepted (what vision models and OCR both take).
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
# 6000 x 6000: a photo or an 8K screenshot passes; a decompression bomb (a few KB of PNG that
# decodes to gigabytes) is refused from its header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 36_000_000
# RapidOCR shrinks anything larger to this side before detection; shrinking while decoding instead
# keeps the RGB array small (a 36 MP image would be 108 MB).
OCR_MAX_SIDE = 2000
# RapidOCR's detector scales an image so that its *shorter* side is 736 px: a 900x105 screenshot of
# one line becomes 6300x736, and detection takes seconds. Padding the short side to 736 px with the
# background colour instead gives the detector the same size to work with at native scale. Measured
# on rendered text (14-48 px, one line to a page): 2-3x faster, same character accuracy (100%).
DET_MIN_SIDE = 736
USER_AGENT = "omnirag-gateway/0.1 (image fetch)"
MAX_IMAGE_REDIRECTS = 3
OCR_MAX_PENDING = 16

ImageFetch = Callable[[str], Awaitable[bytes]]
"""``async (http(s) URL) -> image bytes``; raises OmniragError subclasses with clear messages."""

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),", re.IGNORECASE)
_REDIRECTS = (301, 302, 303, 307, 308)
_TEXT_PARTS = ("text", "refusal")
_A = {"image": "an image", "video": "a video"}
_ACCEPT = {
    "image": "image/png,image/jpeg,image/webp,image/gif;q=0.9,image/*;q=0.5",
    "video": "video/mp4,video/webm,video/quicktime;q=0.9,video/*;q=0.5",
}


# ------------------------------------------------------------------------------------------ images


def _shown(url: str, limit: int = 80) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."


def _open(data: bytes, max_pixels: int, what: str) -> Image.Image:
    """Pillow image of ``data`` with its header checked (format, pixel count); nothing decoded yet."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidInput(
            f"{what} is not an image (send PNG, JPEG, WebP or GIF)", code="invalid_image"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}", code="image_too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{what} cannot be read as an image: {exc}", code="invalid_image") from exc
    if image.format not in IMAGE_FORMATS:
        image.close()
        raise InvalidInput(
            f"{what} is a {image.format} image; send PNG, JPEG, WebP or GIF", code="invalid_image"
        )
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PayloadTooLarge(
            f"{what} is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted",
            code="image_too_large",
        )
    return image


def image_mime(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "the image") -> str:
    """MIME type of image bytes, read from the header only; raises InvalidInput / PayloadTooLarge."""
    with _open(data, max_pixels, what) as image:
        return IMAGE_FORMATS[str(image.format)]


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = OCR_MAX_SIDE) -> np.ndarray:
    """RGB array (height, width, 3) of PNG / JPEG / WebP / GIF bytes (first frame), upright, alpha
    flattened onto white, shrunk to ``max_side``. CPU work: call it off the event loop."""
    with _open(data, max_pixels, "the image") as image:
        try:
            if image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))  # decode at a reduced scale: far less work
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                # Text drawn on a transparent background would turn black on black.
                rgba = upright.convert("RGBA")
                flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                flat.alpha_composite(rgba)
                rgb = flat.convert("RGB")
            else:
                rgb = upright.convert("RGB")
            rgb.thumbnail((max_side, max_side))
            return np.asarray(rgb)
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"the image: {exc}", code="image_too_large") from exc
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
            raise InvalidInput(f"the image cannot be decoded: {exc}", code="invalid_image") from exc


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


def _lines(result: Iterable[Any]) -> str:
    """RapidOCR boxes as text: boxes whose vertical centre falls inside a line's first box join that
    line left to right (with spaces); lines go top to bottom (with newlines)."""
    boxes = []
    for box, text, _score in result:
        text = str(text).strip()
        if not text:
            continue
        xs = [float(p[0]) for p in box]
        ys = [float(p[1]) for p in box]
        boxes.append((min(ys), max(ys), min(xs), text))
    boxes.sort(key=lambda b: (b[0] + b[1]) / 2)
    lines: list[list[tuple[float, float, float, str]]] = []
    for item in boxes:
        centre = (item[0] + item[1]) / 2
        if lines and lines[-1][0][0] <= centre <= lines[-1][0][1]:
            lines[-1].append(item)
        else:
            lines.append([item])
    return "\n".join(" ".join(b[3] for b in sorted(line, key=lambda b: b[2])) for line in lines)


class OCR:
    """RapidOCR (PP-OCRv4, Chinese + English) behind one worker thread.

    The engine is created on first use (loading takes about a second; :meth:`load` does it ahead of
    time). Recognition is CPU-bound and not cheap (a second or more per image on two cores), so it
    runs in a single-thread executor: the event loop stays free and images are read one at a time.
    At most ``max_pending`` images wait or run; more answer 429 rather than queue without bound.
    ``engine_options`` go to ``RapidOCR(**engine_options)`` (e.g. ``det_limit_type="max"`` trades
    accuracy on small text for speed on wide images).
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

    def _get_engine(self) -> Any:
        # Only ever called on the executor's one thread: no lock needed around the creation.
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR  # imports onnxruntime and cv2: slow, so lazy

            self._engine = RapidOCR(**self._options)
        return self._engine

    def _recognise(self, data: bytes) -> str:
        pixels = pad_for_detection(decode_rgb(data, self.max_pixels))
        try:
            result, _elapsed = self._get_engine()(pixels)
        except Exception as exc:
            log.exception("OCR failed")
            raise OmniragError(f"OCR failed: {type(exc).__name__}", code="ocr_failed") from exc
        return _lines(result or [])

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self._pending >= self.max_pending:
                raise Overloaded(
                    f"{self._pending} images are waiting for OCR; try again shortly",
                    code="ocr_busy",
                    retry_after=2,
                )
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:  # closed executor
            with self._lock:
                self._pending -= 1
            raise
        # Counted down when the job ends or is cancelled before it starts (the caller went away).
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    async def load(self) -> None:
        """Create the engine now rather than on the first image."""
        await self._run(self._get_engine)

    async def read(self, image_bytes: bytes) -> str:
        """The text of an image, lines top to bottom ("" when none is found).

        Raises InvalidInput for bytes that are not a PNG / JPEG / WebP / GIF image, PayloadTooLarge
        past ``max_pixels``, Overloaded when too many images wait.
        """
        text: str = await self._run(self._recognise, image_bytes)
        return text

    def close(self) -> None:
        """Stop the worker thread; queued images are dropped, a running one finishes."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------- image fetch


class ImageFetcher:
    """Fetches http(s) image (or, with ``kind="video"``, video) URLs through the SSRF guard:
    ``await fetcher(url) -> bytes``.

    One fetcher resolves each host once (the answer is pinned for its connections), so make one per
    request. Redirects are followed by hand, each hop checked again; the body is streamed and refused
    past ``max_image_bytes`` (``max_video_bytes``); the whole fetch, redirects included, must end within
    ``image_fetch_timeout``. Compressed transfer encodings are refused (images are compressed already,
    and a gzip bomb would otherwise expand past the cap inside one chunk).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: Resolver | None = None,
        *,
        kind: Literal["image", "video"] = "image",
    ) -> None:
        self.kind = kind
        self.max_bytes = settings.max_video_bytes if kind == "video" else settings.max_image_bytes
        self.max_setting = f"GATEWAY_MAX_{kind.upper()}_BYTES"
        self.accept = _ACCEPT[kind]
        self.timeout = settings.image_fetch_timeout
        self.guard = AddressGuard(
            settings.image_fetch_allow_hosts, resolver, allow_setting="GATEWAY_IMAGE_FETCH_ALLOW_HOSTS"
        )

    async def __call__(self, url: str) -> bytes:
        shown = _shown(url)
        client = httpx.AsyncClient(
            transport=PinnedTransport(self.guard, max_connections=2),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": self.accept,
                "Accept-Encoding": "identity",
            },
        )
        try:
            async with client, asyncio.timeout(self.timeout):
                return await self._follow(client, url, shown)
        except TimeoutError as exc:
            raise BadRequest(
                f"{self.kind} URL {shown}: no complete answer within {self.timeout:g} s",
                code=f"{self.kind}_fetch_failed",
            ) from exc
        except RefusedURL as exc:
            raise BadRequest(
                f"{self.kind} URL {shown} refused: {exc.reason}", code=f"{self.kind}_url_refused"
            ) from exc
        except ResolveError as exc:
            raise BadRequest(f"{self.kind} URL {shown}: {exc}", code=f"{self.kind}_fetch_failed") from exc
        except httpx.HTTPError as exc:
            raise BadRequest(
                f"{self.kind} URL {shown} could not be fetched: {type(exc).__name__}: {exc}",
                code=f"{self.kind}_fetch_failed",
            ) from exc

    async def _follow(self, client: httpx.AsyncClient, url: str, shown: str) -> bytes:
        for _ in range(MAX_IMAGE_REDIRECTS + 1):
            reason = url_refusal(url)
            if reason:
                raise BadRequest(
                    f"{self.kind} URL {_shown(url)} refused: {reason}", code=f"{self.kind}_url_refused"
                )
            async with client.stream("GET", url) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                return await self._body(response, shown)
        raise BadRequest(
            f"{self.kind} URL {shown}: more than {MAX_IMAGE_REDIRECTS} redirects",
            code=f"{self.kind}_fetch_failed",
        )

    async def _body(self, response: httpx.Response, shown: str) -> bytes:
        if response.status_code != 200:
            raise BadRequest(
                f"{self.kind} URL {shown} answered HTTP {response.status_code}",
                code=f"{self.kind}_fetch_failed",
            )
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not content_type.startswith(self.kind + "/"):
            raise BadRequest(
                f"{self.kind} URL {shown} answered {content_type or 'no content type'}, not {_A[self.kind]}",
                code=f"{self.kind}_fetch_failed",
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise BadRequest(
                f"{self.kind} URL {shown} answered with content-encoding {encoding}; "
                "only plain bodies are read",
                code=f"{self.kind}_fetch_failed",
            )
        too_large = PayloadTooLarge(
            f"{self.kind} URL {shown}: the {self.kind} is larger than {self.max_bytes:,} bytes "
            f"({self.max_setting})",
            code=f"{self.kind}_too_large",
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large  # stop reading: the rest is never downloaded
            chunks.append(chunk)
        return b"".join(chunks)


# ---------------------------------------------------------------------------------------- messages


@dataclass
class Prepared:
    """What goes to the LLM and what is searched for.

    ``messages``: OpenAI chat messages for the model (images as data URLs when it can see; else their
    OCR text inside the message's text; videos as data URLs). ``question``: the text of the last user
    message, OCR text of its images included (without the ``[Text read from image N]`` headers, which
    would only add noise to a search) — the retrieval query. ``ocr_texts``: the text read from each
    OCR'd image, in order. ``images``, ``videos``: how many the request holds.
    """

    messages: list[dict[str, Any]]
    question: str
    ocr_texts: list[str] = field(default_factory=list)
    images: int = 0
    videos: int = 0


@dataclass
class _Image:
    number: int  # 1-based, over the whole request
    url: str
    detail: Any = None
    data: bytes = b""
    mime: str = ""


@dataclass
class _Video:
    number: int  # 1-based, over the whole request
    url: str
    data: bytes = b""
    mime: str = ""


@dataclass
class _Message:
    source: dict[str, Any]
    texts: list[str] = field(default_factory=list)
    # The parts in order; images are _Image, videos _Video, everything else the part dict as given.
    parts: list[dict[str, Any] | _Image | _Video] | None = None


def content_parts(messages: Iterable[Any]) -> set[str]:
    """The part types beyond text in ``messages`` (``image_url``, ``input_audio``, ``video_url``):
    what the model that answers must take. Malformed messages are left to :func:`prepare` to refuse."""
    found: set[str] = set()
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind in PART_CAPABILITY:
                    found.add(kind)
    return found


def _check_text(message_no: int, text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"message {message_no}: a text part needs a string 'text'", code="invalid_message")
    return text


def _part_url(message_no: int, part: Mapping[str, Any], kind: str) -> str:
    spec = part.get(kind)
    url = spec.get("url") if isinstance(spec, Mapping) else spec
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"message {message_no}: an {kind} part needs {kind}.url", code="invalid_message")
    return url.strip()


def _parse(
    messages: list[dict[str, Any]], settings: GatewaySettings, model: ModelSpec | None
) -> tuple[list[_Message], list[_Image], list[_Video]]:
    """Structure, counts and lengths, all checked before anything is fetched or read."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a non-empty list", code="invalid_message")
    if len(messages) > settings.max_messages:
        raise InvalidInput(
            f"{len(messages)} messages; at most {settings.max_messages} are accepted (GATEWAY_MAX_MESSAGES)",
            code="too_many_messages",
        )
    # None: the one model of the GATEWAY_LLM_* settings, whose refusals name the setting.
    audio_refused = (
        f"the model {model.name!r} cannot take audio"
        if model is not None
        else "the configured model cannot take audio (GATEWAY_LLM_AUDIO=false)"
    )
    model = model or single(settings)
    parsed: list[_Message] = []
    images: list[_Image] = []
    videos: list[_Video] = []
    total = 0
    for no, message in enumerate(messages, 1):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidInput(f"message {no}: needs a 'role' string", code="invalid_message")
        item = _Message(dict(message))
        content = message.get("content")
        if isinstance(content, str):
            item.texts.append(content)
        elif isinstance(content, list):
            item.parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind in _TEXT_PARTS:
                    item.texts.append(_check_text(no, part.get(kind)))
                    item.parts.append(dict(part))
                elif kind == "image_url":
                    url = _part_url(no, part, "image_url")
                    spec = part.get("image_url")
                    detail = spec.get("detail") if isinstance(spec, Mapping) else None
                    image = _Image(len(images) + 1, url, detail)
                    images.append(image)
                    item.parts.append(image)
                elif kind == "input_audio":
                    if not model.takes("input_audio"):
                        # The registry refuses this first for a chat request (unsupported_content,
                        # naming the models that hear); this guards any other caller.
                        raise BadRequest(audio_refused, code="audio_unsupported")
                    _check_audio(no, part.get("input_audio"))
                    item.parts.append(dict(part))
                elif kind == "video_url" and model.takes("video_url"):
                    video = _Video(len(videos) + 1, _part_url(no, part, "video_url"))
                    videos.append(video)
                    item.parts.append(video)
                else:
                    takes = ", ".join(
                        ["text", "image_url", *(k for k in ("input_audio", "video_url") if model.takes(k))]
                    )
                    raise InvalidInput(
                        f"message {no}: content part type {kind!r} is not supported by the model "
                        f"{model.name!r} (use {takes})",
                        code="unsupported_content",
                    )
        elif content is not None:
            raise InvalidInput(
                f"message {no}: 'content' must be a string or a list of parts", code="invalid_message"
            )
        chars = sum(len(t) for t in item.texts)
        if chars > settings.max_message_chars:
            raise InvalidInput(
                f"message {no} has {chars:,} characters of text; at most {settings.max_message_chars:,} "
                "are accepted (GATEWAY_MAX_MESSAGE_CHARS)",
                code="message_too_long",
            )
        total += chars
        parsed.append(item)
    if total > settings.max_total_chars:
        raise InvalidInput(
            f"the messages have {total:,} characters of text; at most {settings.max_total_chars:,} are "
            "accepted (GATEWAY_MAX_TOTAL_CHARS)",
            code="request_too_long",
        )
    if len(images) > settings.max_images:
        raise InvalidInput(
            f"{len(images)} images; at most {settings.max_images} are accepted (GATEWAY_MAX_IMAGES)",
            code="too_many_images",
        )
    if len(videos) > settings.max_videos:
        raise InvalidInput(
            f"{len(videos)} videos; at most {settings.max_videos} are accepted (GATEWAY_MAX_VIDEOS)",
            code="too_many_videos",
        )
    return parsed, images, videos


def _check_audio(message_no: int, audio: Any) -> None:
    if not isinstance(audio, Mapping) or not isinstance(audio.get("format"), str) or not audio["format"]:
        raise InvalidInput(
            f"message {message_no}: input_audio needs 'data' (base64) and 'format'", code="invalid_message"
        )
    data = audio.get("data")
    try:
        if not isinstance(data, str) or not data:
            raise ValueError("empty")
        base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput(
            f"message {message_no}: input_audio.data is not valid base64", code="invalid_message"
        ) from exc


def _decode_data_url(
    url: str, what: str, max_bytes: int, kind: Literal["image", "video"] = "image"
) -> tuple[bytes, str | None]:
    """(bytes, declared MIME type) of a ``data:<kind>/...;base64,`` URL."""
    code = f"invalid_{kind}"
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidInput(f"{what}: malformed data URL", code=code)
    mime = (match.group("mime") or "").lower()
    params = [p.strip().lower() for p in match.group("params").split(";") if p.strip()]
    if not mime.startswith(kind + "/"):
        raise InvalidInput(f"{what}: the data URL is {mime or 'untyped'}, not {kind}/...", code=code)
    if "base64" not in params:
        raise InvalidInput(f"{what}: only base64 data URLs are accepted", code=code)
    payload = "".join(url[match.end() :].split())
    # Refuse from the length alone: an oversized image or video is never decoded.
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
    return data, mime


async def _fetched(
    url: str, what: str, fetch: ImageFetch, max_bytes: int, kind: Literal["image", "video"]
) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _decode_data_url(url, what, max_bytes, kind)[0]
    if scheme in ("http", "https"):
        data = await fetch(url)
        if len(data) > max_bytes:  # a custom fetcher may not cap it
            raise PayloadTooLarge(
                f"{what} is larger than {max_bytes:,} bytes (GATEWAY_MAX_{kind.upper()}_BYTES)",
                code=f"{kind}_too_large",
            )
        return data
    raise InvalidInput(
        f"{what}: URL scheme {scheme or 'missing'!r} is not accepted (use a data: URL or http(s))",
        code=f"invalid_{kind}",
    )


async def _load(image: _Image, settings: GatewaySettings, fetch: ImageFetch, max_pixels: int) -> None:
    """Fill in the image's bytes and real MIME type (read from the bytes, not from what was declared)."""
    what = f"image {image.number}"
    image.data = await _fetched(image.url, what, fetch, settings.max_image_bytes, "image")
    image.mime = await asyncio.to_thread(image_mime, image.data, max_pixels, what)


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


async def _load_video(video: _Video, settings: GatewaySettings, fetch: ImageFetch) -> None:
    what = f"video {video.number}"
    video.data = await _fetched(video.url, what, fetch, settings.max_video_bytes, "video")
    mime = video_mime(video.data)
    if mime is None:
        # The model decodes it; refusing here gives the client a clear 422 instead of the model's
        # error (or a crash in its decoder) for a file that is not a video at all.
        raise InvalidInput(
            f"{what} is not a video (send MP4, QuickTime, WebM, Matroska or AVI)", code="invalid_video"
        )
    video.mime = mime


def _image_part(image: _Image) -> dict[str, Any]:
    url = image.url
    declared = _DATA_URL.match(url)
    if not (declared and (declared.group("mime") or "").lower() == image.mime):
        url = f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    spec: dict[str, Any] = {"url": url}
    if image.detail is not None:
        spec["detail"] = image.detail
    return {"type": "image_url", "image_url": spec}


def _video_part(video: _Video) -> dict[str, Any]:
    url = video.url
    declared = _DATA_URL.match(url)
    if not (declared and (declared.group("mime") or "").lower() == video.mime):
        url = f"data:{video.mime};base64,{base64.b64encode(video.data).decode('ascii')}"
    return {"type": "video_url", "video_url": {"url": url}}


async def prepare(
    messages: list[dict[str, Any]],
    settings: GatewaySettings,
    ocr: OCR | None,
    http_fetch: ImageFetch | None = None,
    *,
    model: ModelSpec | None = None,
) -> Prepared:
    """Validate and prepare OpenAI chat messages for ``model`` (see the module doc).

    ``model``: the registry entry that will answer; by default the one model of the
    ``GATEWAY_LLM_*`` settings. ``ocr`` reads images for a model that cannot see; it may be None
    only when no image needs reading. ``http_fetch`` fetches http(s) image and video URLs; by
    default an :class:`ImageFetcher` made for this call. The input messages are not modified.
    """
    parsed, images, videos = _parse(messages, settings, model)
    vision = (model or single(settings)).takes("image_url")
    max_pixels = ocr.max_pixels if ocr is not None else DEFAULT_MAX_PIXELS
    if images:
        fetch = http_fetch or ImageFetcher(settings)
        for image in images:  # one at a time: bounded memory, and a bad image stops the rest
            await _load(image, settings, fetch, max_pixels)
    if videos:
        fetch = http_fetch or ImageFetcher(settings, kind="video")
        for video in videos:
            await _load_video(video, settings, fetch)

    ocr_texts: list[str] = []
    read: dict[int, str] = {}
    if images and not vision:
        if ocr is None:
            raise OmniragError("images need OCR for this model, but no OCR engine is configured")
        for image in images:
            text = (await ocr.read(image.data)).strip()
            # Bounded like the client's own text: a page of small print must not flood the prompt.
            text = text[: settings.max_message_chars]
            read[image.number] = text
            ocr_texts.append(text)

    def media(part: dict[str, Any] | _Image | _Video) -> dict[str, Any]:
        if isinstance(part, _Image):
            return _image_part(part)
        if isinstance(part, _Video):
            return _video_part(part)
        return part

    out: list[dict[str, Any]] = []
    question_texts: list[str] | None = None
    for item in parsed:
        message = item.source
        own = [p.number for p in item.parts or [] if isinstance(p, _Image)]
        if item.parts is not None and (own or any(isinstance(p, _Video) for p in item.parts)):
            if vision or not own:
                message["content"] = [media(p) for p in item.parts]
            else:
                sections = [
                    f"[Text read from image {n}]\n{read[n]}" if read[n] else f"[Image {n}: no text found]"
                    for n in own
                ]
                text = "\n\n".join([t for t in item.texts if t.strip()] + sections)
                others = [
                    media(p)
                    for p in item.parts
                    if not isinstance(p, _Image)
                    and (isinstance(p, _Video) or p.get("type") not in _TEXT_PARTS)
                ]
                message["content"] = [{"type": "text", "text": text}, *others] if others else text
        out.append(message)
        if message.get("role") == "user":
            extra = [read[n] for n in own if read.get(n)]
            question_texts = [t for t in item.texts if t.strip()] + extra
    question = "\n".join(question_texts or [])
    return Prepared(
        messages=out, question=question, ocr_texts=ocr_texts, images=len(images), videos=len(videos)
    )
