"""Chat messages in, messages for the model and the retrieval query out.

:func:`prepare` validates OpenAI chat messages (structure, counts, lengths, all before anything is
fetched or read), loads their images and videos (data: URLs decoded, http(s) URLs fetched by
:mod:`omnirag.gateway.image_fetch`; the real type read from the bytes by
:mod:`omnirag.gateway.images`), reads images by OCR for a model that cannot see, and says what the
retrieval query is. The model never fetches anything itself: to a model that sees (``vision`` in
its registry entry) images go on as data URLs; for a text-only model every image is read by OCR and
its text joins the message it came in. ``input_audio`` parts go only to a model that takes
``audio``; ``video_url`` parts (vLLM's shape) only to one that takes ``video``, loaded like images
and sent on as data URLs. Which model answers is the registry's choice
(:mod:`omnirag.gateway.registry`), made before this.

Error codes (stable): ``too_many_messages``, ``message_too_long``, ``request_too_long``,
``too_many_images``, ``too_many_videos``, ``invalid_message``, ``unsupported_content`` (422,
InvalidInput); ``audio_unsupported`` (400, BadRequest); and those of
:mod:`omnirag.gateway.images` and :mod:`omnirag.gateway.image_fetch`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omnirag.core.errors import BadRequest, InvalidInput, OmniragError, PayloadTooLarge
from omnirag.extract import DEFAULT_MAX_PIXELS, OCR
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.image_fetch import ImageFetch, ImageFetcher
from omnirag.gateway.images import (
    MediaKind,
    data_url_mime,
    decode_data_url,
    image_mime,
    ocr_text,
    video_mime,
)
from omnirag.gateway.registry import PART_CAPABILITY, ModelSpec, single

__all__ = ["Prepared", "content_parts", "prepare"]

_TEXT_PARTS = ("text", "refusal")


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


async def _fetched(url: str, what: str, fetch: ImageFetch, max_bytes: int, kind: MediaKind) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, what, max_bytes, kind)
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


def _as_data_url(url: str, data: bytes, mime: str) -> str:
    """``url`` itself when it is a data URL of the real type, else one made from the bytes."""
    if data_url_mime(url) == mime:
        return url
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_part(image: _Image) -> dict[str, Any]:
    url = _as_data_url(image.url, image.data, image.mime)
    spec: dict[str, Any] = {"url": url}
    if image.detail is not None:
        spec["detail"] = image.detail
    return {"type": "image_url", "image_url": spec}


def _video_part(video: _Video) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": _as_data_url(video.url, video.data, video.mime)}}


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
            text = (await ocr_text(ocr, image.data)).strip()
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
