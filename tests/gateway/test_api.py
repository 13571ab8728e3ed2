"""The gateway's HTTP surface besides chat: keys and scopes, rate limits with Retry-After, models,
embeddings through the embedder, collections filtered by key, and an image read by OCR."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import openai
from omnirag_harness.gateway_stack import AUTH, DEV_KEY, REPO
from omnirag_harness.servers import metric_value
from PIL import Image, ImageDraw, ImageFont

from omnirag.gateway.config import GatewaySettings

KEYS = json.dumps(
    [
        {"name": "other-team", "key": "other-team-key-0123456789", "collections": ["other"], "rpm": 100},
        {"name": "tiny", "key": "tiny-budget-key-0123456789", "collections": ["docs"], "rpm": 2},
    ]
)


def test_keys_scope_and_limits(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    other = {"Authorization": "Bearer other-team-key-0123456789"}
    tiny = {"Authorization": "Bearer tiny-budget-key-0123456789"}
    chat = {
        "messages": [{"role": "user", "content": "Which port does the gateway listen on?"}],
        "max_tokens": 8,
    }
    with gateway_factory(api_keys=KEYS) as base:
        assert httpx.get(base + "/healthz").status_code == 200  # health needs no key
        assert httpx.get(base + "/metrics").status_code == 200
        assert httpx.get(base + "/v1/models").status_code == 401
        r = httpx.post(
            base + "/v1/chat/completions", json=chat | {"collection": "docs"}, headers=other, timeout=60
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "collection_forbidden"
        names = [c["name"] for c in httpx.get(base + "/v1/collections", headers=other).json()["data"]]
        assert names == []
        names = [c["name"] for c in httpx.get(base + "/v1/collections", headers=AUTH).json()["data"]]
        assert "docs" in names
        assert httpx.get(base + "/v1/models", headers=tiny).status_code == 200
        assert httpx.get(base + "/v1/models", headers=tiny).status_code == 200
        r = httpx.get(base + "/v1/models", headers=tiny)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 61
        assert httpx.get(base + "/v1/models", headers=AUTH).status_code == 200  # other keys unaffected
        metrics = httpx.get(base + "/metrics").text
        assert metric_value(metrics, "omnirag_gateway_rate_limited_total", 'limit="rpm"') >= 1


def test_models_and_embeddings_through_the_gateway(gateway_url: str, embedder_url: str) -> None:
    c = openai.OpenAI(base_url=gateway_url + "/v1", api_key=DEV_KEY, max_retries=0)
    ids = [m.id for m in c.models.list().data]
    assert ids[0] == GatewaySettings().llm_model and "all-MiniLM-L6-v2" in ids
    via_gateway = c.embeddings.create(model="all-MiniLM-L6-v2", input=["the gateway listens on port 8000"])
    direct = httpx.post(
        embedder_url + "/v1/embeddings", json={"input": ["the gateway listens on port 8000"]}
    ).json()
    a = np.array(via_gateway.data[0].embedding)
    b = np.array(direct["data"][0]["embedding"])
    assert a.shape == (384,) and float(a @ b) > 0.9999


def png_with_text(text: str) -> bytes:
    image = Image.new("RGB", (900, 120), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 35), text, fill="black", font=ImageFont.load_default(size=40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_image_text_is_read_by_ocr_and_searched(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    """A text-only model: the gateway reads the image and its text joins the question and the search."""
    llm_bodies: list[dict] = []
    searches: list[dict] = []

    async def record_llm(request: httpx.Request) -> None:
        llm_bodies.append(json.loads(request.content))

    async def record_search(request: httpx.Request) -> None:
        if request.url.path.endswith("/search"):
            searches.append(json.loads(request.content))

    data_url = (
        "data:image/png;base64,"
        + base64.b64encode(png_with_text("Which port does the retriever use?")).decode()
    )
    with gateway_factory() as base:
        gw = gateway_factory.last_app.state.gateway
        gw.llm_http.event_hooks["request"].append(record_llm)
        gw.http.event_hooks["request"].append(record_search)
        r = openai.OpenAI(
            base_url=base + "/v1", api_key=DEV_KEY, max_retries=0, timeout=120
        ).chat.completions.create(
            model="omnirag",
            max_tokens=30,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Answer the question in this picture."},
                        {"type": "image_url", "image_url": {"url": data_url}},
                    ],
                }
            ],
        )
    assert "retriever" in searches[0]["query"].lower() and "port" in searches[0]["query"].lower()
    sent = json.dumps(llm_bodies[-1]["messages"])
    assert "Text read from image 1" in sent and "retriever" in sent.lower()
    assert "image_url" not in sent, "a text-only model never receives the image itself"
    assert r.model_extra["omnirag"]["citations"][0]["source"] == "getting-started.md"


def test_env_example_documents_every_gateway_setting() -> None:
    text = (REPO / "config/.env.example").read_text()
    missing = [n for n in GatewaySettings.model_fields if f"GATEWAY_{n.upper()}=" not in text]
    assert not missing, f"config/.env.example lacks {missing}"
    assert Path(REPO / "config/.env.example").stat().st_size < 64_000
