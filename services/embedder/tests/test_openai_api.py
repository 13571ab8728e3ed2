"""/v1/embeddings as OpenAI clients use it: the official SDK and LangChain, unchanged."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

MODEL = "all-MiniLM-L6-v2"  # the default model the embedder serves

TEXTS = [
    "The gateway listens on port 8000.",
    "FAISS keeps the vectors; BM25 keeps the words.",
    "检索增强生成把文档和大模型连在一起。",
    "A short one.",
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_default_base64_matches_in_process_encode(client, st_model):
    # The SDK asks for base64 by default and decodes it itself.
    res = client.embeddings.create(model=MODEL, input=TEXTS)
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    want = st_model.encode(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    assert [d.index for d in res.data] == list(range(len(TEXTS)))
    assert cosine_rows(got, want).min() > 0.9999
    assert res.model == MODEL


def test_float_format_and_real_token_usage(client, st_model):
    res = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert cosine_rows(got, st_model.encode(TEXTS)).min() > 0.9999
    tokens = sum(len(ids) for ids in st_model.tokenizer(TEXTS)["input_ids"])
    assert res.usage.prompt_tokens == tokens == res.usage.total_tokens


def test_single_string_input(client, st_model):
    res = client.embeddings.create(model=MODEL, input="just one text")
    assert len(res.data) == 1
    assert cosine_rows(np.array([res.data[0].embedding]), st_model.encode(["just one text"]))[0] > 0.9999


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_dimensions_truncate_and_renormalize(client, st_model, fmt):
    res = client.embeddings.create(model=MODEL, input=TEXTS, dimensions=128, encoding_format=fmt)
    # Asked for explicitly, base64 comes back as the string the server sent.
    rows = [
        np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64" else d.embedding
        for d in res.data
    ]
    got = np.array(rows, dtype=np.float32)
    assert got.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    want = st_model.encode(TEXTS)[:, :128]
    assert cosine_rows(got, want).min() > 0.9999


def test_base64_is_little_endian_float32(base_url, st_model):
    r = httpx.post(base_url + "/v1/embeddings", json={"input": TEXTS[:1], "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,)
    assert cosine_rows(vec[None], st_model.encode(TEXTS[:1]))[0] > 0.9999


def test_langchain_openai_embeddings_work_unchanged(base_url, st_model):
    emb = OpenAIEmbeddings(
        model=MODEL, base_url=base_url + "/v1", api_key="unused", check_embedding_ctx_length=False
    )
    docs = np.array(emb.embed_documents(TEXTS), dtype=np.float32)
    query = np.array([emb.embed_query("which port does the gateway use?")], dtype=np.float32)
    assert cosine_rows(docs, st_model.encode(TEXTS)).min() > 0.9999
    assert cosine_rows(query, st_model.encode(["which port does the gateway use?"]))[0] > 0.9999
    # And they are useful: the question is closest to the sentence that answers it.
    assert int(np.argmax(docs @ query[0])) == 0


def test_models_list_and_unknown_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-large", input="x")
    assert err.value.body["code"] == "model_not_found"


def test_model_may_be_omitted(base_url):
    r = httpx.post(base_url + "/v1/embeddings", json={"input": "no model named"})
    assert r.status_code == 200 and r.json()["model"] == MODEL


def test_over_long_text_is_truncated_and_usage_says_so(client, st_model):
    long_text = "retrieval " * 2000
    res = client.embeddings.create(model=MODEL, input=long_text, encoding_format="float")
    assert res.usage.prompt_tokens == st_model.max_seq_length == 256
    got = np.array([res.data[0].embedding])
    assert cosine_rows(got, st_model.encode([long_text]))[0] > 0.9999


def test_info_describes_the_model(base_url):
    info = httpx.get(base_url + "/v1/info").json()
    assert info["model"] == MODEL and info["dimension"] == 384 and info["max_seq_length"] == 256
    assert info["languages"] == ["en"]  # read from the model card
    assert info["normalized"] is True and "binary" in info["precisions"]
