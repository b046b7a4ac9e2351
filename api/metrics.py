"""Prometheus metrics of one app: request latency per route template, method and status; fraud scoring and the drift of
its traffic; the card feed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from edgelake.api.drift import DriftReading, DriftWindow

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


class DriftMetrics:
    """PSI of the scored traffic against the production fraud version's test part (its training distributions), per input, for the score
    and per watched transaction field, computed when scraped from the drift window ``window()`` gives (none: no PSI)."""

    def __init__(self, window: Callable[[], DriftWindow | None]) -> None:
        self._window = window

    def describe(self) -> Iterator[Metric]:
        return self._families(None, 0)

    def collect(self) -> Iterator[Metric]:
        window = self._window()
        return self._families(window.reading(), window.transactions) if window is not None else self._families(None, 0)

    @staticmethod
    def _families(reading: DriftReading | None, transactions: int) -> Iterator[Metric]:
        inputs = GaugeMetricFamily(
            "edgelake_fraud_input_psi", "PSI of each fraud model input in the drift window against the production version's test part.", labels=["input"]
        )
        score = GaugeMetricFamily(
            "edgelake_fraud_score_psi", "PSI of the fraud scores in the drift window against the production version's scores of its test part."
        )
        fields = GaugeMetricFamily(
            "edgelake_fraud_field_psi", "PSI of the mix of values of each transaction field the model does not read (merchant "
            "category, country) in the drift window against the production version's test part.", labels=["field"],
        )
        if reading is not None:
            for name, value in reading.inputs.items():
                inputs.add_metric([name], value)
            score.add_metric([], reading.score)
            for name, value in reading.fields.items():
                fields.add_metric([name], value)
        yield from (inputs, score, fields)
        yield GaugeMetricFamily(
            "edgelake_fraud_drift_window_transactions",
            "Scored transactions the drift window holds; PSI is reported from EDGELAKE_DRIFT_MIN_TRANSACTIONS on.", transactions,
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
