"""``POST /v1/feedback`` against a real Redis: ratings are stored per key in a capped stream with a
TTL, counted in the metric, validated and bounded, refused without a key, 503 when Redis is down —
and one rating names a real streamed answer by its chat completion id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from fastapi.testclient import TestClient
from omnirag_harness.gateway_stack import AUTH as STACK_AUTH
from omnirag_harness.gateway_stack import DEV_KEY as STACK_KEY
from omnirag_harness.servers import metric_value, redis_server

from omnirag.gateway.api.feedback import MAX_COMMENT_CHARS, TTL_SECONDS, stream_key
from omnirag.gateway.app import create_app
from omnirag.gateway.config import GatewaySettings

KEY = "feedback-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER_KEY = "other-feedback-key-0123456789"
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
DOWN = "http://127.0.0.1:9"


def settings_for(redis_url: str, tmp: Path) -> GatewaySettings:
    return GatewaySettings(
        redis_url=redis_url,
        uploads_dir=tmp,
        dev_key=KEY,
        api_keys=json.dumps([{"name": "other", "key": OTHER_KEY, "collections": ["docs"]}]),
        llm_base_url=DOWN + "/v1",
        embedder_url=DOWN,
        retriever_url=DOWN,
        log_json=False,
    )


@pytest.fixture(scope="module")
def feedback_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(str(tmp_path_factory.mktemp("feedback-redis"))) as url:
        yield url


@pytest.fixture
def r(feedback_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(feedback_redis, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def client(feedback_redis: str, r: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(feedback_redis, tmp_path))) as c:
        yield c


def test_ratings_are_stored_per_key_with_a_ttl_and_counted(client: TestClient, r: redis.Redis) -> None:
    up = {"session_id": "chat-1", "message_id": "chatcmpl-abc123", "message_index": 1, "rating": "up"}
    res = client.post("/v1/feedback", json=up, headers=AUTH)
    assert res.status_code == 201, res.text
    assert res.json()["stored"] is True and res.json()["rating"] == "up"
    down = {"session_id": "chat-1", "message_index": 3, "rating": "down", "comment": "  wrong port  "}
    assert client.post("/v1/feedback", json=down, headers=AUTH).status_code == 201

    entries = r.xrange(stream_key("dev"))
    assert [fields["rating"] for _, fields in entries] == ["up", "down"]
    assert entries[0][1]["message_id"] == "chatcmpl-abc123"
    assert entries[1][1]["comment"] == "wrong port"
    assert 0 < r.ttl(stream_key("dev")) <= TTL_SECONDS

    listed = client.get("/v1/feedback", headers=AUTH).json()["data"]
    assert [(i["rating"], i["message_index"]) for i in listed] == [("down", 3), ("up", 1)]  # newest first
    assert listed[1] | {"id": None, "created_at": None} == {
        "id": None,
        "rating": "up",
        "session_id": "chat-1",
        "message_id": "chatcmpl-abc123",
        "message_index": 1,
        "comment": None,
        "created_at": None,
    }
    assert client.get("/v1/feedback", params={"session_id": "other"}, headers=AUTH).json()["data"] == []

    # Another key neither sees these ratings nor adds to them.
    assert client.get("/v1/feedback", headers=OTHER).json()["data"] == []
    assert client.post("/v1/feedback", json=up, headers=OTHER).status_code == 201
    assert r.xlen(stream_key("other")) == 1 and r.xlen(stream_key("dev")) == 2

    metrics = client.get("/metrics").text
    assert metric_value(metrics, "omnirag_gateway_feedback_total", 'rating="up"') == 2
    assert metric_value(metrics, "omnirag_gateway_feedback_total", 'rating="down"') == 1


def test_users_of_a_trusted_key_have_their_own_ratings(client: TestClient, r: redis.Redis) -> None:
    # The dev key acts for the UI's users: one user must not read another's ratings and comments.
    alice, bob = AUTH | {"X-OmniRAG-User": "local~alice"}, AUTH | {"X-OmniRAG-User": "local~bob"}
    up = {"message_id": "chatcmpl-alice1", "rating": "up", "comment": "alice's note"}
    assert client.post("/v1/feedback", json=up, headers=alice).status_code == 201
    assert client.get("/v1/feedback", headers=bob).json()["data"] == []
    assert [i["comment"] for i in client.get("/v1/feedback", headers=alice).json()["data"]] == [
        "alice's note"
    ]
    assert r.xlen(stream_key("dev/local~alice")) == 1 and not r.exists(stream_key("dev"))


@pytest.mark.parametrize(
    "body",
    [
        {"message_id": "chatcmpl-1", "rating": "meh"},
        {"session_id": "chat-1", "rating": "up"},  # names no message
        {"message_index": 2, "rating": "up"},  # an index without its session
        {"message_id": "chatcmpl-1", "rating": "up", "comment": "x" * (MAX_COMMENT_CHARS + 1)},
        {"message_id": "chatcmpl 1; DROP", "rating": "up"},
        {"session_id": "../../etc", "message_index": 0, "rating": "up"},
        {"message_id": "chatcmpl-1", "rating": "up", "extra": 1},
    ],
)
def test_bad_ratings_are_refused(client: TestClient, r: redis.Redis, body: dict) -> None:
    res = client.post("/v1/feedback", json=body, headers=AUTH)
    assert res.status_code == 422, res.text
    assert "error" in res.json()
    assert r.exists(stream_key("dev")) == 0


def test_feedback_needs_a_key(client: TestClient) -> None:
    body = {"message_id": "chatcmpl-1", "rating": "up"}
    assert client.post("/v1/feedback", json=body).status_code == 401
    res = client.post("/v1/feedback", json=body, headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"


def test_redis_down_is_a_clear_503(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for("redis://127.0.0.1:9/0", tmp_path))) as c:
        res = c.post("/v1/feedback", json={"message_id": "chatcmpl-1", "rating": "down"}, headers=AUTH)
        assert res.status_code == 503
        assert res.json()["error"]["code"] == "feedback_unavailable"
        assert "Traceback" not in res.text


def test_rating_a_real_streamed_answer_by_its_id(gateway_url: str) -> None:
    """The UI's path: stream an answer in a session, then rate it by the id its chunks carry."""
    c = openai.OpenAI(base_url=gateway_url + "/v1", api_key=STACK_KEY, max_retries=0, timeout=120)
    stream = c.chat.completions.create(
        model="omnirag",
        messages=[{"role": "user", "content": "Which port does the gateway listen on?"}],
        max_tokens=8,
        stream=True,
        extra_body={"session_id": "feedback-e2e"},
    )
    ids = {chunk.id for chunk in stream}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    (cid,) = ids
    body = {"session_id": "feedback-e2e", "message_id": cid, "message_index": 1, "rating": "up"}
    res = httpx.post(gateway_url + "/v1/feedback", json=body, headers=STACK_AUTH)
    assert res.status_code == 201, res.text
    listed = httpx.get(
        gateway_url + "/v1/feedback", params={"session_id": "feedback-e2e"}, headers=STACK_AUTH
    ).json()["data"]
    assert [(i["message_id"], i["rating"], i["message_index"]) for i in listed] == [(cid, "up", 1)]
