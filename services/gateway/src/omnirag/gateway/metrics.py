"""The gateway's own Prometheus series, beside the request counters every service has."""

from __future__ import annotations

from omnirag.core.http import CIRCUIT_STATE_VALUES, CircuitState
from omnirag.core.metrics import ServiceMetrics

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
#: The parts an answer can be given without (``omnirag.degraded`` of a reply).
DEGRADED_PARTS = ("retriever", "embedder", "history", "answer")


class GatewayMetrics:
    def __init__(self, m: ServiceMetrics) -> None:
        self.ttft = m.histogram(
            "time_to_first_token_seconds",
            "Seconds from request to the first answer token, by mode.",
            ["mode"],
            buckets=TTFT_BUCKETS,
        )
        self.llm_tokens = m.counter(
            "llm_tokens_total", "LLM tokens, by direction (prompt, completion).", ["direction"]
        )
        self.retrieval_hits = m.histogram(
            "retrieval_hits", "Chunks kept for the prompt per RAG answer.", buckets=(0, 1, 2, 4, 8, 16, 32)
        )
        self.rewrites = m.counter(
            "rewrites_total", "History-aware rewrites, by outcome (skipped, changed, same).", ["outcome"]
        )
        self.empty_contexts = m.counter(
            "empty_contexts_total", "RAG answers for which nothing relevant was found."
        )
        self.answers = m.counter(
            "answers_total",
            "RAG answers, by answer mode (generate, extract, auto), what produced the text (model, extract, "
            "none: the gateway's own note) and the grounding verdict (true, false, unchecked).",
            ["mode", "answered_by", "grounded"],
        )
        self.rewrites_checked = m.counter(
            "rewrites_checked_total",
            "History-aware rewrites that were checked, by the one searched (model, fallback).",
            ["result"],
        )
        self.llm_loops = m.counter(
            "llm_loops_total", "Streamed answers cut because the model started repeating itself."
        )
        self.degraded = m.counter("degraded_total", "Answers given with a part down, by part.", ["part"])
        self.rate_limited = m.counter(
            "rate_limited_total", "Requests refused by a rate limit, by limit (rpm, tpm).", ["limit"]
        )
        self.rag_prep_seconds = m.histogram(
            "rag_prep_seconds", "Seconds of history, rewrite and retrieval before the LLM is called."
        )
        self.llm_errors = m.counter(
            "llm_errors_total", "LLM calls that failed, by when (before_stream, mid_stream).", ["when"]
        )
        self.feedback = m.counter("feedback_total", "Answer ratings received, by rating.", ["rating"])
        self.ingest_jobs = m.counter(
            "ingest_jobs_total", "Documents queued for the indexer, by kind.", ["kind"]
        )
        self.circuit_state = m.gauge(
            "circuit_state",
            "Circuit breaker of each upstream (embedder, retriever): 0 closed, 1 half-open, 2 open.",
            ["upstream"],
        )
        # Every known label value starts at 0, so that a panel or an alert over rate() reads 0 on a
        # healthy gateway rather than "No data" (a counter's series exists only once it has a label).
        for part in DEGRADED_PARTS:
            self.degraded.labels(part)
        for limit in ("rpm", "tpm"):
            self.rate_limited.labels(limit)
        for when in ("before_stream", "mid_stream"):
            self.llm_errors.labels(when)
        for direction in ("prompt", "completion"):
            self.llm_tokens.labels(direction)

    def circuit_changed(self, upstream: str, state: CircuitState) -> None:
        self.circuit_state.labels(upstream).set(CIRCUIT_STATE_VALUES[state])
