"""Where a request's time went: the X-*-Time-Ms headers of every answer and the per-request
histograms, with the real model."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from omnirag_harness.servers import metric_value

TEXTS = ["How long did this wait?", "And how long did it take to compute?"]
HEADERS = ("x-queue-time-ms", "x-inference-time-ms", "x-total-time-ms")


def timings(response: httpx.Response) -> tuple[float, float, float]:
    queue, inference, total = (float(response.headers[name]) for name in HEADERS)
    return queue, inference, total


def histogram(text: str, name: str) -> tuple[float, float]:
    return metric_value(text, f"omnirag_embedder_{name}_count"), metric_value(
        text, f"omnirag_embedder_{name}_sum"
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/embed", {"inputs": TEXTS, "normalize": True}), ("/v1/embeddings", {"input": TEXTS})],
)
def test_every_answer_says_where_its_time_went(base_url: str, path: str, body: dict) -> None:
    before = httpx.get(base_url + "/metrics").text
    r = httpx.post(base_url + path, json=body, timeout=60)
    after = httpx.get(base_url + "/metrics").text
    assert r.status_code == 200
    queue, inference, total = timings(r)
    assert queue >= 0 and inference > 0
    assert queue + inference <= total + 0.02  # each rounded to 0.01 ms

    # The same measurements go to the histograms, once per request.
    for name, header in (("queue_wait_seconds", queue), ("request_inference_seconds", inference)):
        count, seconds = (a - b for a, b in zip(histogram(after, name), histogram(before, name), strict=True))
        assert count == 1, name
        assert seconds == pytest.approx(header / 1000, abs=1e-5), name
    # The whole is the shell's request latency, by route (no second histogram of the same).
    route = f'route="{path}",status="200"'
    count = metric_value(after, "omnirag_embedder_request_seconds_count", route) - metric_value(
        before, "omnirag_embedder_request_seconds_count", route
    )
    assert count == 1


async def test_queue_time_and_inference_time_are_told_apart(gated_service) -> None:
    """A pass held at the gate: the request behind it waited (queue time) while the one in it was
    being computed (inference time, as long as the pass it was in)."""
    with gated_service(max_wait_ms=0, max_queue_wait_seconds=600) as (base, _app, gate, passes):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            first = asyncio.ensure_future(client.post("/v1/embed", json={"inputs": ["held in its pass"]}))
            while not passes:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(client.post("/v1/embed", json={"inputs": ["waits behind it"]}))
            await asyncio.sleep(0.5)
            gate.set()
            held, waited = await first, await second
    q1, i1, t1 = timings(held)
    q2, i2, t2 = timings(waited)
    assert i1 >= 450 and q1 < 450  # its pass held it; it hardly waited
    assert q2 >= 450 and i2 < 450  # it waited out the held pass; its own pass was quick
    assert t1 >= i1 and t2 >= q2 + i2 - 0.02
