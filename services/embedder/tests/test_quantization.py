"""int8 / uint8 are a function of the text alone: fixed calibrated ranges, or the caller's ``ranges``."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from omnirag.embedder.calibration import CALIBRATION_TEXTS, calibration_digest

# 64 texts unlike each other and unlike the calibration set: lengths, topics, languages.
BATCH = [
    f"{subject} {verb} {obj}."
    for subject, verb, obj in zip(
        [
            "The auditor",
            "Our cloud bill",
            "A junior designer",
            "The night shift",
            "This spreadsheet",
            "The Paris office",
            "Every pull request",
            "The chatbot",
        ]
        * 8,
        [
            "double-checks",
            "summarizes",
            "cannot open",
            "was rejected by",
            "must reference",
            "slowly replaced",
            "keeps breaking",
            "politely ignores",
        ]
        * 8,
        [f"item {i} of the {'spring' if i % 2 else 'autumn'} inventory" for i in range(64)],
        strict=True,
    )
]
BATCH[5] = "知识库里的文档每天晚上更新一次，上传的文件会一直保留。"
BATCH[17] = "ok"
BATCH[40] = "A much longer text about retention schedules, " * 12


def post_embed(base_url: str, inputs: list[str] | str, **body) -> httpx.Response:
    return httpx.post(base_url + "/v1/embed", json={"inputs": inputs, **body}, timeout=120)


def embed(base_url: str, inputs: list[str] | str, **body) -> dict:
    r = post_embed(base_url, inputs, **body)
    assert r.status_code == 200, r.text
    return r.json()


def floats(base_url: str, inputs: list[str], **body) -> np.ndarray:
    """float32 vectors computed one text per request, as int8 / uint8 texts are computed (one per
    pass): the same floats, bit for bit, so the expected bytes can be derived from them exactly."""
    return np.array([embed(base_url, text, **body)["embeddings"][0] for text in inputs], dtype=np.float32)


def reference(vectors: np.ndarray, precision: str, ranges: np.ndarray) -> np.ndarray:
    """sentence-transformers' own quantize_embeddings with these ranges (6.3 clips and floors)."""
    return quantize_embeddings(vectors, precision=precision, ranges=ranges)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
@pytest.mark.parametrize(
    "options", [{}, {"normalize": True}, {"truncate_dim": 64}, {"truncate_dim": 64, "normalize": True}]
)
def test_a_text_quantizes_to_the_same_bytes_alone_and_in_a_batch_of_64(base_url, precision, options):
    together = np.array(embed(base_url, BATCH, precision=precision, **options)["embeddings"])
    alone = np.array(
        [embed(base_url, text, precision=precision, **options)["embeddings"][0] for text in BATCH]
    )
    assert together.shape == (64, options.get("truncate_dim", 384))
    np.testing.assert_array_equal(alone, together)
    # And not trivially: the vectors use the whole scale, not one bucket.
    assert len(np.unique(together)) > 100


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_a_one_text_request_gets_a_real_vector(base_url, precision):
    # Calibrated on its own vector, every dimension had min == max: a zero step, NaN, one bucket.
    out = embed(base_url, "Where is the onboarding checklist?", precision=precision)
    vector = np.array(out["embeddings"][0])
    lo, hi = (-128, 127) if precision == "int8" else (0, 255)
    assert vector.min() >= lo and vector.max() <= hi
    assert len(np.unique(vector)) > 50


def test_info_carries_the_calibration_and_requests_use_it(base_url):
    info = httpx.get(base_url + "/v1/info").json()
    q = info["quantization"]
    assert q["method"] == "fixed-calibration"
    assert q["calibration_texts"] == len(CALIBRATION_TEXTS)
    assert q["calibration_sha256"] == calibration_digest()
    ranges = np.array(q["ranges"], dtype=np.float32)
    assert ranges.shape == (2, 384) and (ranges[1] > ranges[0]).all()
    assert np.array(q["normalized_ranges"]).shape == (2, 384)

    vectors = floats(base_url, BATCH)
    for precision in ("int8", "uint8"):
        out = embed(base_url, BATCH, precision=precision)
        np.testing.assert_array_equal(np.array(out["ranges"], dtype=np.float32), ranges)
        np.testing.assert_array_equal(np.array(out["embeddings"]), reference(vectors, precision, ranges))


def test_truncated_and_normalized_vectors_get_ranges_of_their_own_shape(base_url):
    vectors = floats(base_url, BATCH, truncate_dim=32, normalize=True)
    out = embed(base_url, BATCH, precision="int8", truncate_dim=32, normalize=True)
    ranges = np.array(out["ranges"], dtype=np.float32)
    assert ranges.shape == (2, 32)
    # Calibrated on re-normalized 32-d vectors, not cut from the 384-d ranges: those would be too
    # narrow and clip most values.
    full = np.array(httpx.get(base_url + "/v1/info").json()["quantization"]["ranges"], dtype=np.float32)
    assert (ranges[1] - ranges[0]).mean() > 1.5 * (full[1, :32] - full[0, :32]).mean()
    np.testing.assert_array_equal(np.array(out["embeddings"]), reference(vectors, "int8", ranges))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_caller_ranges_are_honoured(base_url, precision):
    vectors = floats(base_url, BATCH)
    given = np.vstack((vectors.min(0) - 0.01, vectors.max(0) + 0.01)).astype(np.float32)
    out = embed(base_url, BATCH, precision=precision, ranges=given.tolist())
    np.testing.assert_array_equal(np.array(out["ranges"], dtype=np.float32), given)
    want = reference(vectors, precision, given)
    np.testing.assert_array_equal(np.array(out["embeddings"]), want)

    # The model's full width with truncate_dim is cut like the vectors; so is the output width itself.
    cut = embed(base_url, BATCH, precision=precision, truncate_dim=48, ranges=given.tolist())
    np.testing.assert_array_equal(np.array(cut["embeddings"]), want[:, :48])
    narrow = embed(base_url, BATCH, precision=precision, truncate_dim=48, ranges=given[:, :48].tolist())
    np.testing.assert_array_equal(np.array(narrow["embeddings"]), want[:, :48])

    # Values outside the caller's ranges land in the end buckets instead of wrapping around.
    tight = np.vstack((np.full(384, -0.01), np.full(384, 0.01))).astype(np.float32)
    clipped = np.array(embed(base_url, BATCH, precision=precision, ranges=tight.tolist())["embeddings"])
    np.testing.assert_array_equal(clipped, reference(vectors, precision, tight))
    lo, hi = (-128, 127) if precision == "int8" else (0, 255)
    assert (clipped[vectors > 0.01] == hi).all() and (clipped[vectors < -0.01] == lo).all()

    # max == min is valid: no division by zero, the library's step of 1 (all these land in one bucket).
    flat = given.copy()
    flat[1, :10] = flat[0, :10]
    got = np.array(embed(base_url, BATCH, precision=precision, ranges=flat.tolist())["embeddings"])
    np.testing.assert_array_equal(got, reference(vectors, precision, flat))
    assert (got[:, :10] == lo).all()


def _ranges(width: int = 384, low: float = -1.0, high: float = 1.0) -> list[list[float]]:
    return [[low] * width, [high] * width]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"ranges": _ranges()[:1]}, "ranges"),
        ({"ranges": [*_ranges(), [0.0] * 384]}, "ranges"),
        ({"ranges": [[-1.0] * 384, [1.0] * 383]}, "one length"),
        ({"ranges": _ranges(100)}, "2 x 384"),
        ({"ranges": _ranges(100), "truncate_dim": 64}, "2 x 64"),
        ({"ranges": _ranges(low=1.0, high=-1.0)}, "below min"),
        ({"ranges": [[-1.0] * 383 + ["x"], [1.0] * 384]}, "ranges"),
        ({"ranges": _ranges(high=1e39)}, "float32"),
        ({"ranges": [[]] * 2}, "ranges"),
        ({"ranges": _ranges(20000)}, "ranges"),
    ],
)
def test_bad_ranges_are_a_clear_422(base_url, body, fragment):
    r = post_embed(base_url, ["a text"], precision="int8", **body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_input"
    assert fragment in err["message"]


def test_non_finite_ranges_are_a_clear_422(base_url):
    # JSON has no infinity; 1e999 is what a client's encoder writes for one, and parsers read it as inf.
    body = '{"inputs": "a text", "precision": "uint8", "ranges": [[' + ", ".join(["-1"] * 384) + "], ["
    body += ", ".join(["1"] * 383 + ["1e999"]) + "]]}"
    r = httpx.post(
        base_url + "/v1/embed", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
