"""Chat messages with images, audio and video: prepare() with the real OCR model (RapidOCR from its
package), real images made with Pillow and a real HTTP server on 127.0.0.1 for image and video URLs
(omnirag.gateway.messages, .images and .image_fetch together)."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import random
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from omnirag_harness.http_server import Site, serve_site
from omnirag_harness.images import text_image
from PIL import Image

from omnirag.core.errors import (
    BadRequest,
    InvalidInput,
    OmniragError,
    Overloaded,
    PayloadTooLarge,
    status_for,
)
from omnirag.extract import OCR
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.image_fetch import ImageFetcher
from omnirag.gateway.images import image_mime, ocr_text
from omnirag.gateway.messages import prepare
from omnirag.gateway.registry import ModelSpec

SENTENCE = "The gateway listens on port 8000"


def noise_png(side: int) -> bytes:
    rng = random.Random(7)
    image = Image.frombytes("L", (side, side), bytes(rng.getrandbits(8) for _ in range(side * side)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(*parts: dict | str) -> dict:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"role": "user", "content": content}


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def settings(**overrides) -> GatewaySettings:
    return GatewaySettings(_env_file=None, **overrides)


def norm(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def ocr() -> Iterator[OCR]:
    engine = OCR()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def png() -> bytes:
    return text_image([SENTENCE])


# ------------------------------------------------------------------------------------ image server


@pytest.fixture
def server() -> Iterator[Site]:
    with serve_site(Site(page_type="image/png")) as site:
        yield site


LOCAL = {"image_fetch_allow_hosts": ["127.0.0.1"]}


# --------------------------------------------------------------------------------------------- OCR
# The engine itself (decoding, line grouping, the pixel cap) is omnirag.extract's, tested there;
# here: what the gateway answers with it.


async def test_ocr_reads_a_png(ocr, png):
    await ocr.load()
    started = time.perf_counter()
    text = await ocr_text(ocr, png)
    elapsed = time.perf_counter() - started
    print(f"\nOCR of a 900x105 PNG: {elapsed:.2f} s -> {text!r}")
    assert norm(text) == norm(SENTENCE)  # one line: boxes on the same line are joined with spaces
    assert ocr.pending == 0


async def test_ocr_reads_lines_top_to_bottom_from_transparent_png_and_jpeg(ocr):
    lines = ["Retriever port 8002", "Embedder port 8001"]
    transparent = text_image(lines, mode="RGBA")  # black text on a transparent background
    text = await ocr_text(ocr, transparent)
    assert [norm(line) for line in text.splitlines()] == [norm(line) for line in lines]
    jpeg = text_image(["Redis keeps history"], fmt="JPEG")
    assert norm(await ocr_text(ocr, jpeg)) == "redis keeps history"


async def test_ocr_refuses_non_images_and_bombs(ocr):
    with pytest.raises(InvalidInput, match="not an image") as caught:
        await ocr_text(ocr, b"%PDF-1.7 definitely not an image")
    assert caught.value.code == "invalid_image" and status_for(caught.value) == 422
    bmp = io.BytesIO()
    Image.new("RGB", (10, 10)).save(bmp, "BMP")
    with pytest.raises(InvalidInput, match="BMP image; send PNG, JPEG, WebP or GIF"):
        await ocr_text(ocr, bmp.getvalue())
    # 8000 x 8000 white pixels: a few KB of PNG, 192 MB once decoded
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 30_000
    with pytest.raises(PayloadTooLarge, match="8000x8000 pixels") as caught:
        await ocr_text(ocr, bomb.getvalue())
    assert status_for(caught.value) == 413
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        await ocr_text(ocr, text_image(["cut short"])[:300])
    assert ocr.pending == 0


async def test_ocr_queue_is_bounded(ocr, png):
    ocr.max_pending = 1
    try:
        results = await asyncio.gather(ocr_text(ocr, png), ocr_text(ocr, png), return_exceptions=True)
    finally:
        ocr.max_pending = 16
    assert norm(results[0]) == norm(SENTENCE)
    assert isinstance(results[1], Overloaded) and status_for(results[1]) == 429
    assert ocr.pending == 0


# ----------------------------------------------------------------------------------- text model


async def test_text_model_gets_the_ocr_text_in_the_message(ocr, png):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        user("Which port is this?", image_part(data_url(png))),
    ]
    before = copy.deepcopy(messages)
    prepared = await prepare(messages, settings(), ocr)
    assert messages == before  # the input is not modified
    assert prepared.images == 1 and len(prepared.ocr_texts) == 1
    assert norm(prepared.ocr_texts[0]) == norm(SENTENCE)
    assert prepared.messages[0] == {"role": "system", "content": "Answer briefly."}
    content = prepared.messages[1]["content"]
    assert isinstance(content, str)  # plain text for a text-only model
    assert content.startswith("Which port is this?\n\n[Text read from image 1]\n")
    assert norm(SENTENCE) in norm(content)
    assert prepared.question.startswith("Which port is this?\n")
    assert "[Text read" not in prepared.question and norm(SENTENCE) in norm(prepared.question)


async def test_question_is_the_last_user_message(ocr, png):
    messages = [
        user("first question"),
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [image_part(data_url(png))]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
    ]
    prepared = await prepare(messages, settings(), ocr)
    assert norm(prepared.question) == norm(SENTENCE)  # only the image's text
    assert prepared.messages[2]["content"].startswith("[Text read from image 1]\n")
    assert prepared.messages[3] == messages[3]
    assert prepared.messages[0] == messages[0]  # without images a message stays as it was


async def test_an_image_without_text_is_marked(ocr):
    blank = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(blank, "PNG")
    prepared = await prepare([user("what is this?", image_part(data_url(blank.getvalue())))], settings(), ocr)
    assert prepared.messages[0]["content"] == "what is this?\n\n[Image 1: no text found]"
    assert prepared.question == "what is this?" and prepared.ocr_texts == [""]


# --------------------------------------------------------------------------------- vision model


async def test_vision_model_keeps_image_parts(png):
    url = data_url(png)
    messages = [user("Describe", image_part(url, detail="low"))]
    prepared = await prepare(messages, settings(llm_vision=True), ocr=None)
    assert prepared.messages[0]["content"] == [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    assert prepared.ocr_texts == [] and prepared.images == 1 and prepared.question == "Describe"


async def test_vision_model_gets_the_real_image_type():
    jpeg = text_image(["x"], fmt="JPEG")
    prepared = await prepare(
        [user(image_part(data_url(jpeg, "image/png")))], settings(llm_vision=True), ocr=None
    )
    url = prepared.messages[0]["content"][0]["image_url"]["url"]
    assert url == data_url(jpeg, "image/jpeg")
    for fmt, mime in (("WEBP", "image/webp"), ("GIF", "image/gif")):
        assert image_mime(text_image(["x"], fmt=fmt)) == mime


# ------------------------------------------------------------------------------------ image URLs


async def test_http_image_is_fetched_when_the_host_is_allowed(server, png):
    server.page("/shot.png", png)
    server.redirect("/moved", "/shot.png")
    prepared = await prepare(
        [user("see", image_part(server.url("/moved")))], settings(llm_vision=True, **LOCAL), ocr=None
    )
    assert prepared.messages[0]["content"][1]["image_url"]["url"] == data_url(png)  # model fetches nothing
    assert server.paths() == ["/moved", "/shot.png"]


async def test_http_image_is_read_by_ocr_for_a_text_model(server, png, ocr):
    server.page("/shot.png", png, "image/png; charset=binary")
    prepared = await prepare([user(image_part(server.url("/shot.png")))], settings(**LOCAL), ocr)
    assert norm(prepared.question) == norm(SENTENCE)


async def test_loopback_urls_are_refused_by_default(server, png):
    server.page("/shot.png", png)
    for url in (server.url("/shot.png"), server.url("/shot.png").replace("127.0.0.1", "[::ffff:127.0.0.1]")):
        with pytest.raises(
            BadRequest, match=r"loopback address.*; list the host in GATEWAY_IMAGE_FETCH"
        ) as caught:
            await prepare([user(image_part(url))], settings(llm_vision=True), ocr=None)
        assert caught.value.code == "image_url_refused" and status_for(caught.value) == 400
    assert server.paths() == []  # refused before connecting


async def test_a_redirect_to_a_refused_address_is_not_followed(server):
    server.redirect("/hop", "http://169.254.169.254/latest/meta-data/")
    with pytest.raises(BadRequest, match="cloud metadata"):
        await prepare([user(image_part(server.url("/hop")))], settings(llm_vision=True, **LOCAL), ocr=None)


async def test_a_name_that_resolves_to_a_private_address_is_refused(png):
    async def resolver(host: str, port: int) -> list[str]:
        return ["10.0.0.5"]

    fetch = ImageFetcher(settings(), resolver=resolver)
    with pytest.raises(BadRequest, match=r"img\.example resolves to 10\.0\.0\.5, private"):
        await prepare(
            [user(image_part("https://img.example/a.png"))], settings(llm_vision=True), None, http_fetch=fetch
        )


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("file:///etc/passwd", InvalidInput, "scheme 'file' is not accepted"),
        ("ftp://example.com/a.png", InvalidInput, "scheme 'ftp' is not accepted"),
        ("/relative.png", InvalidInput, "scheme 'missing'"),
        ("http://user:pw@127.0.0.1/a.png", BadRequest, "credentials"),
    ],
)
async def test_other_schemes_and_credentials_are_refused(url, error, match):
    with pytest.raises(error, match=match):
        await prepare([user(image_part(url))], settings(llm_vision=True, **LOCAL), ocr=None)


async def test_http_answers_that_are_not_images(server):
    server.page("/page", b"<html>hi</html>", "text/html")
    server.page("/fake.png", b"not really a png", "image/png")
    cases = [
        ("/page", BadRequest, "answered text/html, not an image"),
        ("/missing.png", BadRequest, "answered HTTP 404"),
        ("/fake.png", InvalidInput, "image 1 is not an image"),
    ]
    for path, error, match in cases:
        with pytest.raises(error, match=match):
            await prepare([user(image_part(server.url(path)))], settings(llm_vision=True, **LOCAL), None)


async def test_http_image_size_is_capped_while_streaming(server):
    body = noise_png(1200)  # ~1.4 MB
    server.page("/declared.png", body)
    server.stream("/undeclared.png", body)  # no Content-Length: only counting stops it
    for path in ("/declared.png", "/undeclared.png"):
        with pytest.raises(PayloadTooLarge, match="larger than 65,536 bytes") as caught:
            await prepare(
                [user(image_part(server.url(path)))],
                settings(llm_vision=True, max_image_bytes=65536, **LOCAL),
                ocr=None,
            )
        assert caught.value.code == "image_too_large"


async def test_http_fetch_has_a_deadline(server, png):
    def slow(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.end_headers()
        for byte in png[:20]:  # drips: every read succeeds, the whole never arrives
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.1)

    server.routes["/slow.png"] = slow
    started = time.perf_counter()
    with pytest.raises(BadRequest, match=r"no complete answer within 0\.5 s"):
        await prepare(
            [user(image_part(server.url("/slow.png")))],
            settings(llm_vision=True, image_fetch_timeout=0.5, **LOCAL),
            ocr=None,
        )
    assert time.perf_counter() - started < 1.5


# -------------------------------------------------------------------------------------- validation


async def test_too_many_messages_and_too_much_text():
    with pytest.raises(InvalidInput, match="3 messages; at most 2") as caught:
        await prepare([user("a")] * 3, settings(max_messages=2), None)
    assert caught.value.code == "too_many_messages" and status_for(caught.value) == 422
    with pytest.raises(InvalidInput, match="message 2 has 11 characters of text; at most 10") as caught:
        await prepare([user("short"), user("x" * 6, "y" * 5)], settings(max_message_chars=10), None)
    assert caught.value.code == "message_too_long"
    with pytest.raises(InvalidInput, match="the messages have 24 characters") as caught:
        await prepare([user("x" * 8)] * 3, settings(max_message_chars=10, max_total_chars=20), None)
    assert caught.value.code == "request_too_long"


async def test_too_many_images(png):
    with pytest.raises(InvalidInput, match="3 images; at most 2") as caught:
        await prepare([user(*[image_part(data_url(png))] * 3)], settings(max_images=2), None)
    assert caught.value.code == "too_many_images"


async def test_oversize_data_url_is_refused_before_decoding():
    big = noise_png(100)  # ~10 KB
    assert len(big) > 2048
    with pytest.raises(PayloadTooLarge, match="image 1 is larger than 2,048 bytes") as caught:
        await prepare([user(image_part(data_url(big)))], settings(max_image_bytes=2048), None)
    assert status_for(caught.value) == 413


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64,@@not base64@@", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # bad padding
        ("data:image/png;base64,", "empty"),
        ("data:image/png,rawbytes", "only base64 data URLs"),
        ("data:text/plain;base64,aGVsbG8=", "text/plain, not image/"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "image 1 is not an image"),
        ("data:nonsense", "malformed data URL"),
    ],
)
async def test_bad_data_urls(url, match):
    with pytest.raises(InvalidInput, match=match) as caught:
        await prepare([user(image_part(url))], settings(llm_vision=True), None)
    assert caught.value.code == "invalid_image"


async def test_malformed_messages():
    cases = [
        ([], "non-empty list"),
        ([{"content": "no role"}], "needs a 'role'"),
        ([{"role": "user", "content": 5}], "string or a list of parts"),
        ([user({"type": "text", "text": 5})], "needs a string 'text'"),
        ([user({"type": "image_url", "image_url": {}})], "needs image_url.url"),
        ([user({"type": "video_url", "video_url": {"url": "x"}})], "'video_url' is not supported"),
        ([user("fine", "also fine", {"type": "file"})], "'file' is not supported"),
    ]
    for messages, match in cases:
        with pytest.raises(InvalidInput, match=match):
            await prepare(messages, settings(), None)


# ------------------------------------------------------------------------------------------- audio

AUDIO = {
    "type": "input_audio",
    "input_audio": {"data": base64.b64encode(b"RIFF....WAVE").decode(), "format": "wav"},
}


async def test_audio_is_refused_when_the_model_cannot_hear():
    with pytest.raises(BadRequest) as caught:
        await prepare([user("transcribe", AUDIO)], settings(llm_audio=False), None)
    assert str(caught.value) == "the configured model cannot take audio (GATEWAY_LLM_AUDIO=false)"
    assert caught.value.code == "audio_unsupported" and status_for(caught.value) == 400


async def test_audio_is_kept_when_the_model_can_hear(ocr, png):
    prepared = await prepare([user("transcribe", AUDIO)], settings(llm_audio=True), None)
    assert prepared.messages[0]["content"] == [{"type": "text", "text": "transcribe"}, AUDIO]
    assert prepared.question == "transcribe"
    # beside an image read by OCR: the text (with the image's) first, then the audio
    prepared = await prepare([user("both", image_part(data_url(png)), AUDIO)], settings(llm_audio=True), ocr)
    text, audio = prepared.messages[0]["content"]
    assert audio == AUDIO and text["text"].startswith("both\n\n[Text read from image 1]\n")
    bad = {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}
    with pytest.raises(InvalidInput, match="not valid base64"):
        await prepare([user(bad)], settings(llm_audio=True), None)


async def test_images_need_an_ocr_engine_for_a_text_model(png):
    with pytest.raises(OmniragError, match="no OCR engine"):
        await prepare([user(image_part(data_url(png)))], settings(), None)


# ------------------------------------------------------------------------------------------- video

# A model that watches (Qwen2.5-Omni's entry) and one that does not.
WATCHER = ModelSpec(name="omni", base_url="http://omni/v1", capabilities=("text", "vision", "audio", "video"))
READER = ModelSpec(name="smol", base_url="http://smol/v1", capabilities=("text",))
# The first bytes of an MP4 (an ISO ftyp box), a WebM (EBML) and an AVI (RIFF): the gateway checks the
# container; decoding it is the model's work.
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
WEBM = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + b"\x00" * 64


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


async def test_a_video_data_url_goes_to_a_model_that_watches():
    url = data_url(MP4, "video/mp4")
    prepared = await prepare([user("what happens?", video_part(url))], settings(), None, model=WATCHER)
    assert prepared.messages[0]["content"] == [{"type": "text", "text": "what happens?"}, video_part(url)]
    assert prepared.videos == 1 and prepared.question == "what happens?"
    # declared as the wrong type: sent on as what its bytes are
    prepared = await prepare([user(video_part(data_url(WEBM, "video/mp4")))], settings(), None, model=WATCHER)
    assert prepared.messages[0]["content"] == [video_part(data_url(WEBM, "video/webm"))]


async def test_a_video_beside_an_image_read_by_ocr_stays_a_part(ocr, png):
    model = WATCHER.model_copy(update={"capabilities": ("text", "video")})
    url = data_url(MP4, "video/mp4")
    prepared = await prepare(
        [user("both", image_part(data_url(png)), video_part(url))], settings(), ocr, model=model
    )
    text, video = prepared.messages[0]["content"]
    assert video == video_part(url) and text["text"].startswith("both\n\n[Text read from image 1]\n")


async def test_an_http_video_is_fetched_through_the_guard(server):
    server.page("/clip.mp4", MP4, "video/mp4")
    prepared = await prepare(
        [user(video_part(server.url("/clip.mp4")))], settings(**LOCAL), None, model=WATCHER
    )
    assert prepared.messages[0]["content"] == [
        video_part(data_url(MP4, "video/mp4"))
    ]  # the model fetches nothing
    with pytest.raises(BadRequest) as caught:  # a loopback host not allowed
        await prepare([user(video_part(server.url("/clip.mp4")))], settings(), None, model=WATCHER)
    assert caught.value.code == "video_url_refused"
    server.page("/page", b"<html>", "text/html")
    with pytest.raises(BadRequest, match="not a video") as caught:
        await prepare([user(video_part(server.url("/page")))], settings(**LOCAL), None, model=WATCHER)
    assert caught.value.code == "video_fetch_failed"


async def test_videos_are_bounded():
    big = data_url(MP4 + b"\x00" * 4096, "video/mp4")
    with pytest.raises(PayloadTooLarge) as caught:
        await prepare([user(video_part(big))], settings(max_video_bytes=2048), None, model=WATCHER)
    assert caught.value.code == "video_too_large" and "GATEWAY_MAX_VIDEO_BYTES" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        await prepare(
            [user(*[video_part(data_url(MP4, "video/mp4"))] * 3)], settings(max_videos=2), None, model=WATCHER
        )
    assert caught.value.code == "too_many_videos"
    with pytest.raises(InvalidInput) as caught:
        await prepare(
            [user(video_part(data_url(b"not a video at all", "video/mp4")))], settings(), None, model=WATCHER
        )
    assert caught.value.code == "invalid_video"
    with pytest.raises(InvalidInput) as caught:
        await prepare([user(video_part(data_url(MP4, "image/png")))], settings(), None, model=WATCHER)
    assert caught.value.code == "invalid_video"
    with pytest.raises(InvalidInput) as caught:
        await prepare([user(video_part("file:///etc/passwd"))], settings(), None, model=WATCHER)
    assert caught.value.code == "invalid_video"


async def test_a_model_that_cannot_watch_or_hear_refuses_video_and_audio():
    with pytest.raises(InvalidInput, match="'video_url' is not supported by the model 'smol'") as caught:
        await prepare([user(video_part(data_url(MP4, "video/mp4")))], settings(), None, model=READER)
    assert caught.value.code == "unsupported_content"
    with pytest.raises(BadRequest, match="the model 'smol' cannot take audio"):
        await prepare([user(AUDIO)], settings(llm_audio=True), None, model=READER)  # the model decides
    prepared = await prepare([user("hear", AUDIO)], settings(), None, model=WATCHER)
    assert prepared.messages[0]["content"][1] == AUDIO
