"""/v1/embed: the SentenceTransformer.encode surface of the seed, checked against the library."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

TEXTS = [
    "Redis keeps the chat history with a TTL.",
    "The retriever reloads a new index version without a restart.",
    "向量数据库存储文档和元数据。",
    "int8 embeddings use a quarter of the memory.",
    "Binary quantization keeps one bit per dimension.",
]


def embed(base_url: str, **body) -> dict:
    r = httpx.post(base_url + "/v1/embed", json={"inputs": TEXTS, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_float32_matches_encode(base_url, st_model):
    out = embed(base_url)
    got = np.array(out["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(TEXTS), atol=2e-5)
    assert out["precision"] == "float32" and out["dimension"] == 384


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_precisions_equal_quantize_embeddings_of_the_same_vectors(base_url, st_model, precision):
    # int8 / uint8 use fixed calibrated ranges instead of each request's own: see test_quantization.py.
    floats = np.array(embed(base_url)["embeddings"], dtype=np.float32)
    out = embed(base_url, precision=precision)
    got = np.array(out["embeddings"])
    want = quantize_embeddings(floats, precision=precision)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert out["precision"] == precision
    # And it is what encode(precision=...) gives in-process, up to rounding at bucket edges.
    direct = st_model.encode(TEXTS, precision=precision)
    assert (got != direct).mean() < 0.01


def test_truncate_dim_and_normalize(base_url, st_model):
    out = embed(base_url, truncate_dim=64, normalize=True)
    got = np.array(out["embeddings"], dtype=np.float32)
    assert got.shape == (len(TEXTS), 64) and out["dimension"] == 64 and out["normalized"] is True
    want = st_model.encode(TEXTS, truncate_dim=64, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=2e-5)
    raw = np.array(embed(base_url, truncate_dim=64)["embeddings"], dtype=np.float32)
    assert np.linalg.norm(raw, axis=1).max() < 0.99  # not normalized unless asked


def test_prompt_is_prepended_like_encode(base_url, st_model):
    got = np.array(embed(base_url, prompt="query: ")["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(TEXTS, prompt="query: "), atol=2e-5)
    plain = np.array(embed(base_url)["embeddings"], dtype=np.float32)
    assert np.abs(got - plain).max() > 1e-3  # the prompt really changed the vectors


def test_prompt_name_from_the_model_config(base_url, st_model):
    got = np.array(embed(base_url, prompt_name="query")["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, st_model.encode(TEXTS, prompt_name="query"), atol=2e-5)
    r = httpx.post(base_url + "/v1/embed", json={"inputs": "x", "prompt_name": "no-such-prompt"})
    assert r.status_code == 422
    assert "query" in r.json()["error"]["message"]  # names the prompts that exist


def test_token_embeddings_with_their_tokens(base_url, st_model):
    out = embed(base_url, output_value="token_embeddings")
    assert len(out["token_embeddings"]) == len(TEXTS)
    direct = st_model.encode(TEXTS, output_value="token_embeddings")
    for item, text, want in zip(out["token_embeddings"], TEXTS, direct, strict=True):
        ids = st_model.tokenizer(text)["input_ids"]
        assert item["tokens"] == st_model.tokenizer.convert_ids_to_tokens(ids)
        np.testing.assert_allclose(np.array(item["embeddings"], dtype=np.float32), want.numpy(), atol=2e-5)
    assert out["token_embeddings"][0]["tokens"][0] == "[CLS]"
    assert out["usage"]["prompt_tokens"] == sum(len(t["tokens"]) for t in out["token_embeddings"])
