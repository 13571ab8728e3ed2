"""The embedding service: a loaded model, its batching queue and its metrics, used by the routes."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from starlette.requests import Request

from omnirag.core.errors import ClientGone, InvalidInput, NotFound, NotReady, PayloadTooLarge
from omnirag.core.metrics import ServiceMetrics
from omnirag.embedder.batching import PASS_OVERHEAD_TOKENS, BatchQueue, BatchStats
from omnirag.embedder.calibration import CALIBRATION_TEXTS, Calibration
from omnirag.embedder.config import EmbedderSettings
from omnirag.embedder.model import EmbeddingModel

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_COUNT_INLINE_MAX = 16
_COUNT_INLINE_CHARS = 16384
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class EmbedderMetrics:
    def __init__(self, m: ServiceMetrics) -> None:
        self.queue_depth = m.gauge("queue_depth", "Texts waiting in the batching queue.")
        self.queue_capacity = m.gauge(
            "queue_capacity", "Texts the batching queue holds at most (EMBEDDER_MAX_QUEUE_INPUTS)."
        )
        self.batch_size = m.histogram("batch_size", "Texts per forward pass.", buckets=SIZE_BUCKETS)
        self.batch_tokens = m.histogram(
            "batch_tokens", "Padded tokens (texts x longest) per forward pass.", buckets=TOKEN_BUCKETS
        )
        self.inference_seconds = m.histogram("inference_seconds", "Seconds per forward pass.")
        self.failures = m.counter("failures_total", "Requests or texts that failed, by reason.", ["reason"])
        self.input_tokens = m.counter("input_tokens_total", "Tokens embedded (after truncation).")
        self.texts = m.counter("texts_total", "Texts embedded.")
        # Per request, beside the per-pass inference_seconds and the shell's request_seconds (its
        # total): what a slow answer waited for, and what it was computed in.
        self.queue_wait = m.histogram(
            "queue_wait_seconds",
            "Seconds from a request's admission until its first text starts a pass.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.request_inference = m.histogram(
            "request_inference_seconds",
            "Seconds of forward passes that computed a request's texts (each pass once per request).",
        )
        self.pass_overhead = m.gauge(
            "pass_overhead_tokens",
            "The batcher's price of one more forward pass, in tokens (measured at start-up).",
        )

    def on_pass(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.padded_tokens)
        self.inference_seconds.observe(stats.seconds)
        self.texts.inc(stats.size)


@dataclass(frozen=True)
class Encoded:
    results: list[Any]  # one float32 vector (or TokenOutput) per text
    tokens: int
    queue_seconds: float = 0.0  # from admission until its first text started a pass
    inference_seconds: float = 0.0  # in the passes that computed its texts


class EmbedService:
    def __init__(
        self,
        model: EmbeddingModel,
        settings: EmbedderSettings,
        metrics: EmbedderMetrics,
        *,
        pass_overhead_tokens: float | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.settings = settings
        self.metrics = metrics
        overhead = settings.pass_overhead_tokens
        if overhead is None:
            overhead = pass_overhead_tokens if pass_overhead_tokens is not None else PASS_OVERHEAD_TOKENS
        metrics.pass_overhead.set(overhead)
        metrics.queue_capacity.set(settings.max_queue_inputs)
        self.queue = BatchQueue(
            self._run_pass,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            plan_batches=settings.plan_batches,
            max_wait=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue_inputs,
            max_queue_wait=settings.max_queue_wait_seconds,
            pass_overhead_tokens=overhead,
            on_pass=metrics.on_pass,
            on_depth=metrics.queue_depth.set,
            on_drop=lambda n: metrics.failures.labels("client_gone").inc(n),
            on_error=lambda e: metrics.failures.labels("inference_error").inc(),
            on_start=metrics.queue_wait.observe,
            on_expire=lambda n: metrics.failures.labels("queue_wait_exceeded").inc(),
            solo=lambda key: len(cast(tuple[Any, ...], key)) > 2,  # the "exact" kinds, see encode()
        )
        self._count_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnirag-count")

    async def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()
        self._count_executor.shutdown(wait=False, cancel_futures=True)

    def _run_pass(self, key: Hashable, texts: list[str]) -> Sequence[Any]:
        output_value, prompt = cast(tuple[str, str | None], key)[:2]
        if output_value == "token_embeddings":
            return self.model.encode_tokens(texts, prompt)
        return list(self.model.encode(texts, prompt))

    def precheck(self) -> None:
        """Refuse before the body is even read when not one more text could be admitted: under overload
        this is most requests, and parsing and validating 32 texts each would only delay the 429."""
        try:
            self.queue.check(1)
        except Exception as exc:
            self.metrics.failures.labels(getattr(exc, "code", "queue")).inc()
            raise

    def check_model(self, requested: str | None) -> None:
        if requested and requested not in (self.model.name, self.model.path):
            self.metrics.failures.labels("unknown_model").inc()
            raise NotFound(
                f"model {requested!r} is not served here; this server serves {self.model.name!r}",
                code="model_not_found",
            )

    def resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is not None:
            return prompt
        name = prompt_name or self.model.default_prompt_name
        if name is None:
            return None
        if name not in self.model.prompts:
            self.metrics.failures.labels("invalid_input").inc()
            known = ", ".join(sorted(self.model.prompts)) or "none"
            raise InvalidInput(f"unknown prompt_name {name!r}; this model has: {known}")
        return self.model.prompts[name] or None

    def quantization_ranges(
        self, given: list[list[float]] | None, truncate_dim: int | None, normalize: bool
    ) -> np.ndarray:
        """The (2, output dimension) float32 ranges for int8 / uint8: the caller's, or the calibrated ones
        for vectors post-processed as these are."""
        out_dim = truncate_dim or self.model.dimension
        if given is None:
            if self.calibration is None:  # only a service built without calibrate() (a test harness)
                raise NotReady("int8 / uint8 calibration is not ready", code="model_loading")
            return self.calibration.ranges(truncate_dim, normalize)
        width = len(given[0])
        if width not in (out_dim, self.model.dimension):
            self.metrics.failures.labels("invalid_input").inc()
            raise InvalidInput(
                f"ranges must be 2 x {out_dim} (the output dimension) or 2 x {self.model.dimension} (the "
                f"model's, truncated like the vectors); got 2 x {width}"
            )
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
            ranges = np.ascontiguousarray(np.asarray(given, dtype=np.float32)[:, :out_dim])
        if not np.isfinite(ranges).all():  # finite in float64, beyond float32's range
            self.metrics.failures.labels("invalid_input").inc()
            raise InvalidInput("ranges hold values beyond float32's range")
        return ranges

    def check_dimension(self, dim: int | None, field: str) -> None:
        if dim is not None and dim > self.model.dimension:
            self.metrics.failures.labels("invalid_input").inc()
            raise InvalidInput(f"{field}={dim} exceeds the model's dimension {self.model.dimension}")

    async def encode(
        self,
        request: Request,
        texts: list[str],
        *,
        prompt: str | None = None,
        output_value: str = "sentence_embedding",
        exact: bool = False,
    ) -> Encoded:
        """Embed ``texts`` through the batching queue. ``exact``: each text in a pass of its own, so its
        floats are bit for bit the same whatever else is queued (in a padded batch they move by ~1e-7,
        which is enough to cross an int8 bucket edge now and then)."""
        if len(texts) > self.settings.max_inputs_per_request:
            self.metrics.failures.labels("too_many_inputs").inc()
            raise PayloadTooLarge(
                f"{len(texts)} inputs in one request; the limit is {self.settings.max_inputs_per_request}",
                code="too_many_inputs",
            )
        # Admission before any tokenizing: under overload most requests are refused, and a refusal that
        # first tokenized 32 texts on a shared counting thread took seconds instead of microseconds.
        try:
            ticket = self.queue.admit(len(texts))
        except Exception as exc:
            self.metrics.failures.labels(getattr(exc, "code", "queue")).inc()
            raise
        try:
            texts = [self.model.clip(t) for t in texts]
            if len(texts) <= _COUNT_INLINE_MAX and sum(map(len, texts)) <= _COUNT_INLINE_CHARS:
                # A few short texts: counting takes microseconds, less than a hop to another thread.
                counts = self.model.count_tokens(texts, prompt, inline=True)
            else:
                # Many or long texts: off the event loop, on one counting thread.
                counts = await asyncio.get_running_loop().run_in_executor(
                    self._count_executor, self.model.count_tokens, texts, prompt
                )
            key: tuple[Any, ...] = (output_value, prompt, "exact") if exact else (output_value, prompt)
            futures = self.queue.submit(key, texts, counts, ticket)
        except BaseException as exc:
            ticket.release()  # its places go back whether counting failed or the caller went away
            if isinstance(exc, Exception):
                self.metrics.failures.labels(getattr(exc, "code", "queue")).inc()
            raise
        results = await _wait_unless_gone(request, futures)
        total = sum(counts)
        self.metrics.input_tokens.inc(total)
        self.metrics.request_inference.observe(ticket.inference_seconds)
        return Encoded(results, total, ticket.queue_seconds, ticket.inference_seconds)


def calibrate(model: EmbeddingModel, batch_size: int) -> Calibration:
    """Embed the calibration set (start-up, inference thread not yet running) and keep its vectors."""
    texts = list(CALIBRATION_TEXTS)
    vectors = np.concatenate(
        [model.encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    )
    return Calibration(vectors, lambda v, dim, norm: postprocess(v, truncate_dim=dim, normalize=norm))


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next message the server gives is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _wait_unless_gone(request: Request, futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Wait for every result, or, if the caller disconnects first, cancel them so none is computed."""
    gathered: asyncio.Future[list[Any]] = asyncio.gather(*futures)
    watcher: asyncio.Future[Any] = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        for fut in futures:
            fut.cancel()
        raise
    finally:
        watcher.cancel()
    if gathered in done:
        if gathered.cancelled() or gathered.exception() is not None:
            # One text failed (its pass, or the wait bound): nobody will use the others, so they are
            # not computed either.
            for fut in futures:
                fut.cancel()
        return gathered.result()
    for fut in futures:
        fut.cancel()
    gathered.cancel()
    raise ClientGone("the client disconnected before its embeddings were computed")


def postprocess(vectors: np.ndarray, *, truncate_dim: int | None, normalize: bool) -> np.ndarray:
    """Truncate (Matryoshka) then L2-normalize, in that order, as SentenceTransformer.encode does."""
    if truncate_dim is not None:
        vectors = vectors[:, :truncate_dim]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
