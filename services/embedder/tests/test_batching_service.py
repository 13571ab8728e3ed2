"""The batching queue seen from outside: merging, overload, hang-ups and readiness, real model."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import openai
import pytest
from omnirag_harness.servers import metric_value, serve_in_thread

from omnirag.embedder.app import create_app
from omnirag.embedder.config import EmbedderSettings

MODEL = "all-MiniLM-L6-v2"


def metrics(base: str) -> str:
    return httpx.get(base + "/metrics").text


async def test_64_concurrent_single_sentence_requests_are_merged(base_url, st_model):
    sentences = [f"Sentence number {i} is about {'retrieval' if i % 2 else 'batching'}." for i in range(64)]
    before = metrics(base_url)
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    async with client:
        results = await asyncio.gather(*(client.embeddings.create(model=MODEL, input=s) for s in sentences))
    got = np.array([r.data[0].embedding for r in results], dtype=np.float32)
    want = st_model.encode(sentences)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999  # every caller got its own sentence's vector back

    after = metrics(base_url)
    passes = metric_value(after, "omnirag_embedder_batch_size_count") - metric_value(
        before, "omnirag_embedder_batch_size_count"
    )
    texts = metric_value(after, "omnirag_embedder_batch_size_sum") - metric_value(
        before, "omnirag_embedder_batch_size_sum"
    )
    assert texts == 64
    assert passes < 64, "requests were not merged into batches"
    singles = metric_value(after, "omnirag_embedder_batch_size_bucket", 'le="1.0"') - metric_value(
        before, "omnirag_embedder_batch_size_bucket", 'le="1.0"'
    )
    assert singles < passes or passes == 1  # at least one pass held more than one text


async def test_a_full_queue_answers_429_with_retry_after_and_recovers(gated_service):
    # The wait bound is out of the way here (its own tests are below): a slow machine must not turn
    # the queued requests into 429s while the test looks at the full queue.
    with gated_service(max_queue_inputs=4, max_wait_ms=0, max_queue_wait_seconds=600) as (
        base,
        _app,
        gate,
        passes,
    ):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            # The first request is taken by the worker, which then waits at the gate.
            first = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "first"}))
            while not passes:
                await asyncio.sleep(0.01)
            # Four more texts fill the queue; everything after that is refused at once.
            queued = [
                asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [f"q{i}", f"r{i}"]}))
                for i in range(2)
            ]
            await asyncio.sleep(0.2)
            refused = await asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": f"extra {i}"}) for i in range(5))
            )
            assert {r.status_code for r in refused} == {429}
            for r in refused:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "overloaded"
            gate.set()
            done = await asyncio.gather(first, *queued)
            assert [r.status_code for r in done] == [200, 200, 200]
            # Recovered: the queue drained, new work is accepted again.
            again = await client.post("/v1/embeddings", json={"input": "after the storm"})
            assert again.status_code == 200
            text = (await client.get("/metrics")).text
            assert metric_value(text, "omnirag_embedder_failures_total", 'reason="overloaded"') == 5
            assert metric_value(text, "omnirag_embedder_queue_depth") == 0
            # What an alert divides the depth by: the limit this process really runs with.
            assert metric_value(text, "omnirag_embedder_queue_capacity") == 4


async def test_work_for_a_client_that_hung_up_is_dropped_before_it_is_computed(gated_service):
    with gated_service(max_wait_ms=0, max_queue_wait_seconds=600) as (base, _app, gate, passes):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            holder = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "holds the worker"}))
            while not passes:
                await asyncio.sleep(0.01)
            # This caller gives up while its texts wait in the queue.
            async with httpx.AsyncClient(base_url=base, timeout=0.5) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post("/v1/embeddings", json={"input": ["abandoned one", "abandoned two"]})
            # Let the server notice the hang-up: it answers the gone caller 499 (however slow the machine).
            deadline = time.monotonic() + 30
            while not any(
                line.startswith("omnirag_embedder_requests_total{") and 'status="499"' in line
                for line in metrics(base).splitlines()
            ):
                assert time.monotonic() < deadline, "the server never noticed the hang-up"
                await asyncio.sleep(0.05)
            gate.set()
            assert (await holder).status_code == 200
            after = await client.post("/v1/embeddings", json={"input": "next caller"})
            assert after.status_code == 200
            computed = [t for p in passes for t in p]
            assert "abandoned one" not in computed and "abandoned two" not in computed
            assert "next caller" in computed
            text = (await client.get("/metrics")).text
            assert metric_value(text, "omnirag_embedder_failures_total", 'reason="client_gone"') == 2


def test_readyz_and_requests_say_the_model_failed_to_load(tmp_path):
    app = create_app(EmbedderSettings(model_path=str(tmp_path / "missing-model"), log_json=False))
    with serve_in_thread(app, ready_path=None) as base:
        deadline = time.monotonic() + 30
        while True:
            r = httpx.get(base + "/readyz")
            if "failed" in r.text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 503
        assert "missing-model" in r.json()["checks"]["model"]["detail"]
        assert httpx.get(base + "/healthz").status_code == 200  # alive, just not ready
        e = httpx.post(base + "/v1/embeddings", json={"input": "x"})
        assert e.status_code == 503 and e.json()["error"]["code"] == "model_failed"


def test_request_metrics_by_route_and_status(base_url):
    httpx.post(base_url + "/v1/embeddings", json={"input": "metrics please"})
    text = metrics(base_url)
    assert (
        metric_value(
            text, "omnirag_embedder_requests_total", 'method="POST",route="/v1/embeddings",status="200"'
        )
        >= 1
    )
    assert 'omnirag_embedder_request_seconds_bucket{le="0.005",route="/v1/embeddings",status="200"}' in text
    assert metric_value(text, "omnirag_embedder_input_tokens_total") > 0
    assert "omnirag_embedder_inference_seconds_count" in text
    assert "omnirag_embedder_batch_tokens_bucket" in text


async def test_mixed_long_and_short_texts_under_concurrency_all_succeed(base_url, st_model):
    # Regression: counting tokens on one thread while a pass tokenized on another corrupted the
    # shared tokenizer's padding state and failed whole batches with 500.
    texts = [
        ("检索增强生成把文档和大模型连在一起。" * 30) if i % 3 == 0 else f"short question {i}?"
        for i in range(48)
    ]
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        rs = await asyncio.gather(
            *(client.post("/v1/embeddings", json={"input": t, "encoding_format": "float"}) for t in texts)
        )
    assert [r.status_code for r in rs] == [200] * len(texts)
    got = np.array([r.json()["data"][0]["embedding"] for r in rs], dtype=np.float32)
    want = st_model.encode(texts)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999


def count_tokenizer_calls(app) -> list[int]:
    """Record every token count the service asks for (a mechanism: the real tokenizer still counts)."""
    model = app.state.service.model
    real = model.count_tokens
    calls: list[int] = []

    def counting(texts, prompt=None, *, inline=False):
        calls.append(len(texts))
        return real(texts, prompt, inline=inline)

    model.count_tokens = counting
    return calls


async def test_a_full_queue_refuses_before_tokenizing(gated_service):
    with gated_service(max_queue_inputs=4, max_wait_ms=0, max_queue_wait_seconds=600) as (
        base,
        app,
        gate,
        passes,
    ):
        calls = count_tokenizer_calls(app)
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            first = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "first"}))
            while not passes:
                await asyncio.sleep(0.01)
            queued = [
                asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [f"q{i}", f"r{i}"]}))
                for i in range(2)
            ]
            while len(calls) < 3:  # the two queued requests have been counted and queued
                await asyncio.sleep(0.01)
            refused = await asyncio.gather(
                *(client.post("/v1/embeddings", json={"input": [f"extra {i}"] * 32}) for i in range(5))
            )
            assert {r.status_code for r in refused} == {429}
            assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
            assert len(calls) == 3, "a refused request was tokenized"
            gate.set()
            assert [r.status_code for r in await asyncio.gather(first, *queued)] == [200, 200, 200]


async def test_a_request_that_cannot_start_within_the_wait_bound_gets_429(gated_service):
    with gated_service(max_wait_ms=0, max_queue_wait_seconds=0.5) as (base, _app, gate, passes):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            # Started before the bound ran out: it is served however long its pass takes.
            holder = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "holds the worker"}))
            while not passes:
                await asyncio.sleep(0.01)
            # Queued behind the held pass: it never starts within 0.5 s, so it is answered 429 while the
            # worker is still held (the gate opens only after this answer came).
            late = await asyncio.wait_for(
                client.post("/v1/embeddings", json={"input": ["never started", "nor this"]}), 30
            )
            assert late.status_code == 429, late.text
            assert late.json()["error"]["code"] == "overloaded"
            assert "without starting" in late.json()["error"]["message"]
            assert int(late.headers["retry-after"]) >= 1
            gate.set()
            assert (await holder).status_code == 200
            after = await client.post("/v1/embeddings", json={"input": "next caller"})
            assert after.status_code == 200
            computed = [t for p in passes for t in p]
            assert "never started" not in computed and "nor this" not in computed
            text = (await client.get("/metrics")).text
            assert metric_value(text, "omnirag_embedder_failures_total", 'reason="queue_wait_exceeded"') == 1
            assert metric_value(text, "omnirag_embedder_queue_depth") == 0
            assert metric_value(text, "omnirag_embedder_queue_wait_seconds_count") >= 2


async def test_a_request_the_measured_rate_cannot_start_in_time_is_refused_at_once(gated_service):
    # 32 passages of ~256 tokens: a pass this CPU computes at well under 200 texts/s.
    passage = "The retention schedule keeps invoices for ten years and chat logs for thirty days. " * 20
    with gated_service(max_wait_ms=0, max_queue_wait_seconds=10) as (base, app, gate, passes):
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            gate.set()
            warm = await client.post("/v1/embeddings", json={"input": [passage] * 32})
            assert warm.status_code == 200
            assert app.state.service.queue.rate > 0  # measured on that pass
            gate.clear()
            holder = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "holds the worker"}))
            while len(passes) < 2:
                await asyncio.sleep(0.01)
            # 2048 texts fit the queue, and nothing is ahead of them: admitted.
            big = asyncio.ensure_future(
                client.post("/v1/embeddings", json={"input": [f"t{i}" for i in range(2048)]})
            )
            while app.state.service.queue.depth < 2048:
                assert not big.done(), (await big).text
                await asyncio.sleep(0.01)
            calls = count_tokenizer_calls(app)
            # 2048 texts ahead at under 200 texts/s is more than 10 s: refused at once, untokenized.
            probe = await client.post("/v1/embeddings", json={"input": "one more"})
            assert probe.status_code == 429, probe.text
            assert "more than the 10s a request may wait" in probe.json()["error"]["message"]
            assert int(probe.headers["retry-after"]) >= 1
            assert calls == []
            gate.set()
            assert (await holder).status_code == 200
            big_answer = await big
            assert big_answer.status_code in (200, 429)  # it may itself run out of time: either is fine
