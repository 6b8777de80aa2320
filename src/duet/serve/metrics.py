"""Prometheus metrics of one server, named as prometheus.io advises.

``duet_`` prefix, base units (seconds, bytes), ``_total`` on counters. One
registry per app (no process-global state), served at ``GET /metrics``:

| metric | type | labels |
|---|---|---|
| duet_requests_total | counter | route (the route template), code (``499``: the client hung up before the answer; ``408``: it stopped sending its body) |
| duet_read_timeouts_total | counter | phase (``headers``, ``body``): connections cut by a read deadline |
| duet_request_duration_seconds | histogram | route; buckets include the SLO edges 0.1, 0.25, 0.5, 1 s |
| duet_request_images_total | counter | route |
| duet_batch_size_images | histogram | |
| duet_inference_duration_seconds | histogram | |
| duet_queue_wait_seconds | histogram | |
| duet_queue_images | gauge | |
| duet_requests_in_flight | gauge | |
| duet_predictions_total | counter | label |
| duet_prediction_confidence_ratio | histogram | (top-1 probability) |
| duet_model_info | gauge (=1) | name, version, architecture, runtime, device, sha256 |
| duet_model_loaded | gauge | 1 once the model is loaded and the server ready, 0 while draining |
| duet_model_load_failures_total | counter | |
| process_* | | resident memory, CPU seconds, open fds (Linux) |

The route label is the template (``/v2/models/{name}/infer``), never the raw
path, so a scanner cannot blow up the series count; unmatched paths are
``route="unmatched"``.
"""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The latency SLO edges (0.1 / 0.25 / 0.5 / 1 s) are bucket boundaries, so the
# alert rules can compute "share of requests slower than 250 ms" exactly.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ServeMetrics:
    def __init__(self, labels: list[str]) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter(
            "duet_requests", "HTTP requests by route template and status code.", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "duet_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.read_timeouts = Counter(
            "duet_read_timeouts",
            "Connections closed because the request head or body "
            "did not arrive in time (--header-timeout, --body-timeout).",
            ["phase"],
            registry=r,
        )
        for phase in ("headers", "body"):
            self.read_timeouts.labels(phase)
        self.request_images = Counter(
            "duet_request_images", "Images received for inference, by route.", ["route"], registry=r
        )
        self.batch_size = Histogram(
            "duet_batch_size_images", "Images per runtime call (dynamic batches).", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "duet_inference_duration_seconds", "Runtime call duration per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "duet_queue_wait_seconds",
            "Time a request waited in the batcher queue.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_images = Gauge("duet_queue_images", "Images waiting in the batcher queue.", registry=r)
        self.in_flight = Gauge("duet_requests_in_flight", "HTTP requests being handled.", registry=r)
        self.predictions = Counter("duet_predictions", "Top-1 predictions by label.", ["label"], registry=r)
        self.confidence = Histogram(
            "duet_prediction_confidence_ratio",
            "Top-1 probability of each prediction.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "duet_model_info",
            "The served model (value is always 1).",
            ["name", "version", "architecture", "runtime", "device", "sha256"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "duet_model_loaded", "1 when the model is loaded and the server is ready.", registry=r
        )
        self.load_failures = Counter("duet_model_load_failures", "Model loads that failed.", registry=r)
        self._labels = list(labels)
        for label in self._labels:  # export zeros so rate() works from the first scrape
            self.predictions.labels(label)

    def observe_batch(self, size: int, seconds: float, waits: list[float]) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        for w in waits:
            self.queue_wait.observe(w)

    def observe_predictions(self, probabilities: np.ndarray) -> None:
        if len(probabilities) == 0:
            return
        top = probabilities.argmax(1)
        conf = probabilities[np.arange(len(top)), top]
        for index, count in zip(*np.unique(top, return_counts=True)):
            self.predictions.labels(self._labels[int(index)]).inc(int(count))
        for c in conf:
            self.confidence.observe(float(c))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP response (401s and 404s included) by route template and code."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # to name the route of responses sent before routing (e.g. 401)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            template = self._template(scope)
            self.metrics.requests.labels(template, str(status["code"])).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                match, _ = candidate.matches(dict(scope))
                if match != Match.NONE:
                    route = candidate
                    break
        return getattr(route, "path", None) or "unmatched"
