"""Bad input gets the documented status and a JSON error with a stable code, never a stack trace."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/embeddings", {"input": []}, 422, "must not be empty"),
        ("/v1/embeddings", {"input": ""}, 422, "empty"),
        ("/v1/embeddings", {"input": ["ok", "   "]}, 422, "input[1]"),
        ("/v1/embeddings", {"input": [101, 2023]}, 422, "token ids"),
        ("/v1/embeddings", {"input": [[101, 2023]]}, 422, "token ids"),
        ("/v1/embeddings", {"input": ["ok", 3.5]}, 422, "input[1]"),
        ("/v1/embeddings", {"input": {"text": "x"}}, 422, "string"),
        ("/v1/embeddings", {}, 422, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "x", "dimensions": 0}, 422, "dimensions"),
        ("/v1/embeddings", {"input": "x", "dimensions": 385}, 422, "384"),
        ("/v1/embeddings", {"input": ["a"] * 2049}, 413, "2048"),
        ("/v1/embed", {"inputs": []}, 422, "must not be empty"),
        ("/v1/embed", {"inputs": "x", "precision": "int4"}, 422, "precision"),
        ("/v1/embed", {"inputs": "x", "precision": "float16"}, 422, "precision"),
        ("/v1/embed", {"inputs": "x", "truncate_dim": 1000}, 422, "truncate_dim"),
        ("/v1/embed", {"inputs": "x", "prompt": "q: ", "prompt_name": "query"}, 422, "not both"),
        ("/v1/embed", {"inputs": "x", "batch_size": 4}, 422, "batch_size"),
        (
            "/v1/embed",
            {"inputs": "x", "output_value": "token_embeddings", "precision": "int8"},
            422,
            "float32",
        ),
        ("/v1/embed", {"inputs": "x", "output_value": "logits"}, 422, "output_value"),
    ],
)
def test_bad_input_is_a_clear_4xx(base_url, path, body, status, fragment):
    r = httpx.post(base_url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] in {"invalid_input", "too_many_inputs"}
    assert fragment in err["message"]


def test_malformed_json_is_rejected(base_url):
    r = httpx.post(
        base_url + "/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_input"


def test_body_over_the_size_limit_is_413(base_url):
    r = httpx.post(base_url + "/v1/embeddings", json={"input": "x" * (17 * 1024 * 1024)}, timeout=60)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_size_limit_is_413(base_url):
    # No Content-Length: the limit can only be enforced while the body streams in.
    def body():
        yield b'{"input": "'
        chunk = b"x" * (1024 * 1024)
        for _ in range(17):
            yield chunk
        yield b'"}'

    r = httpx.post(
        base_url + "/v1/embeddings", content=body(), headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"


def test_failures_are_counted_by_reason(base_url):
    from omnirag_harness.servers import metric_value

    before = metric_value(
        httpx.get(base_url + "/metrics").text, "omnirag_embedder_failures_total", 'reason="too_many_inputs"'
    )
    httpx.post(base_url + "/v1/embeddings", json={"input": ["a"] * 2049})
    after = metric_value(
        httpx.get(base_url + "/metrics").text, "omnirag_embedder_failures_total", 'reason="too_many_inputs"'
    )
    assert after == before + 1
