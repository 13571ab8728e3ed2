"""Prometheus metrics for a service: one registry per app, names prefixed ``omnirag_<service>_``.

A registry per app (not the process-global one) lets tests start several apps in one process
without "duplicated timeseries" errors, and keeps each service's ``/metrics`` to its own series.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.prefix = f"omnirag_{service}_"
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests_total = self.counter(
            "requests_total",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
        )
        self.request_seconds = self.histogram(
            "request_seconds",
            "HTTP request latency in seconds, by route and status.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
        )
        self.requests_in_flight = self.gauge("requests_in_flight", "HTTP requests being served now.")

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.prefix + name, doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self.prefix + name, doc, list(labels), registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(self.prefix + name, doc, list(labels), buckets=buckets, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
