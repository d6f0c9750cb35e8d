"""Prometheus metrics of one server, in a registry of its own (two apps in one process never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Status codes that mean "refused", and the reason label each one counts under.
REJECTION_REASONS = {
    400: "bad_request",
    413: "too_large",
    415: "unsupported_media_type",
    429: "queue_full",
    503: "unavailable",
    504: "timeout",
}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "maskclip_requests", "HTTP requests answered", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram(
            "maskclip_request_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.rejections = Counter("maskclip_rejections", "Requests refused, by reason", ["reason"], registry=registry)
        self.batch_size = Histogram(
            "maskclip_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=registry
        )
        self.inference = Histogram(
            "maskclip_inference_seconds", "Forward pass time", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge("maskclip_queue_depth", "Images waiting for the model", registry=registry)
        self.images = Counter("maskclip_images", "Images answered, by verdict", ["verdict"], registry=registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status in REJECTION_REASONS:
            self.rejections.labels(REJECTION_REASONS[status]).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
