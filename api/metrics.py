"""Prometheus metrics of one app: request latency per route template, method and status; fraud scoring; the card feed."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"  # one label for every path no route matched, so scanners cannot grow the label set


def request_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "edgelake_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template, method and status.",
        ["route", "method", "status"],
        registry=registry,
    )


@dataclass(frozen=True)
class ScoreMetrics:
    """Scores by decision, the fraud model versions in use (production and shadow), and score events on their way to the broker or lost."""

    decisions: Counter
    model_version: Gauge
    model_refused: Gauge
    shadow_version: Gauge
    unpublished: Counter
    pending: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ScoreMetrics:
        return cls(
            Counter("edgelake_fraud_scores", "Transactions scored, by decision.", ["decision"], registry=registry),
            Gauge("edgelake_fraud_model_version", "Version of the production fraud model serving scores; 0 for none.", registry=registry),
            Gauge(
                "edgelake_fraud_model_refused_version",
                "The latest fraud model version refused for failing its signature, feature-version or loading checks; 0 for none.",
                registry=registry,
            ),
            Gauge(
                "edgelake_fraud_shadow_model_version",
                "Version of the canary fraud model scoring in shadow beside production (callers never get its scores); 0 for none.",
                registry=registry,
            ),
            Counter(
                "edgelake_fraud_score_events_unpublished", "Score events that could not be sent to the fraud-scores topic.", registry=registry
            ),
            Gauge(
                "edgelake_fraud_score_events_pending", "Score events queued or in flight, not yet acknowledged by the fraud-scores topic.",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class CardFeedMetrics:
    """Transactions topic records the card feed fed into card histories or refused, the partitions it reads and how far behind it is."""

    records: Counter
    partitions: Gauge
    lag: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CardFeedMetrics:
        return cls(
            Counter(
                "edgelake_card_feed_records", "Transactions topic records read by the card feed, by outcome (fed, invalid).", ["outcome"],
                registry=registry,
            ),
            Gauge("edgelake_card_feed_partitions", "Transactions topic partitions the card feed reads now; 0 while disconnected.", registry=registry),
            Gauge("edgelake_card_feed_lag", "Records of the transactions topic the card feed has not read yet (as of its last fetch).", registry=registry),
        )


class LatencyMiddleware:
    """Times every HTTP request into ``histogram``, labelled by the route template that answered it."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", UNMATCHED)
            self.histogram.labels(template, scope["method"], str(status)).observe(time.perf_counter() - started)
