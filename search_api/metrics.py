"""Prometheus metrics of one app instance.

Each app gets its own registry rather than the global default one, so several apps in one
process (tests, an embedding host application) never collide on metric names, and /metrics
shows exactly this app's figures plus the process's CPU and memory.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

# Query embedding is ~10-25 ms on 2 cores; uploads of large photos take longer to decode.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every instrument the API updates, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "lookalike_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lookalike_http_request_duration_seconds",
            "Time from request to the end of the response, by route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "lookalike_http_requests_in_progress",
            "Requests being handled now.",
            registry=self.registry,
        )
        self.embed_seconds = Histogram(
            "lookalike_query_embedding_seconds",
            "Decoding and embedding one query image.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lookalike_query_batch_size",
            "Query images embedded together in one model call (micro-batching).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.search_seconds = Histogram(
            "lookalike_store_search_seconds",
            "One store search (vector, text, hybrid or filters only).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.thumbnails = Counter(
            "lookalike_thumbnails",
            "Thumbnail requests, by whether the disk cache had it.",
            ["cache"],
            registry=self.registry,
        )
        self.model_reloads = Counter(
            "lookalike_model_reloads",
            "Model and index reloads after a rollout moved the alias.",
            registry=self.registry,
        )
        self.model_info = Info(
            "lookalike_model", "The model version being served.", registry=self.registry
        )
