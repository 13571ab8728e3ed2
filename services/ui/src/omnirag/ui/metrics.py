"""The UI's own Prometheus series, beside the request counters every service has."""

from __future__ import annotations

from omnirag.core.metrics import ServiceMetrics

TTFT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class UiMetrics:
    def __init__(self, m: ServiceMetrics) -> None:
        self.answers = m.counter(
            "answers_total", "Questions asked in the page, by outcome (ok, degraded, error).", ["outcome"]
        )
        self.ttft = m.histogram(
            "time_to_first_token_seconds",
            "Seconds from a question to the first streamed answer text, as the UI sees it.",
            buckets=TTFT_BUCKETS,
        )
        self.gateway_errors = m.counter(
            "gateway_errors_total",
            "Gateway calls that failed, by call and HTTP status "
            "('none': no answer; 'ui': the UI's own error).",
            ["call", "status"],
        )
        self.uploads = m.counter(
            "uploads_total",
            "Documents uploaded, by outcome (done, failed, refused, still_running).",
            ["outcome"],
        )
        self.documents_removed = m.counter(
            "documents_removed_total",
            "Documents removed from the upload panel, by outcome (done, failed, refused).",
            ["outcome"],
        )
        self.feedback = m.counter("feedback_total", "Answers rated in the page, by rating.", ["rating"])
        self.conversations = m.counter(
            "conversation_actions_total", "Conversations started, switched to or deleted.", ["action"]
        )
