"""The edgelake API as a FastAPI app: ``create_app(settings)``, or ``app_from_env`` for uvicorn's factory mode.

Every error is ``application/problem+json`` (RFC 9457). Every /v1 route names the roles it
admits; keys, their roles and rate limits live in :mod:`api.keys` and :mod:`api.auth`.
Metrics and rate limits are kept per server process (per uvicorn worker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge

from edgelake.api.body_limit import BodyLimitMiddleware
from edgelake.api.card_feed import CardFeed, Start
from edgelake.api.audit import AuditLog, AuditMiddleware
from edgelake.api.audit_export import AuditExporter
from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore, ResultForwarder
from edgelake.api.keys import KeyStore
from edgelake.api.log_redaction import redact_access_log
from edgelake.api.metrics import CardFeedMetrics, DriftMetrics, LatencyMiddleware, ScoreMetrics, request_histogram
from edgelake.api.problems import install_problem_handlers
from edgelake.api.publisher import ScorePublisher
from edgelake.api.score_outbox import RedisScoreOutbox
from edgelake.api.ratelimit import rate_limiter
from edgelake.api.routers import audit, dashboard, devices, health, models, score, sql, tables
from edgelake.api.routers.dashboard import TopicEnds
from edgelake.api.shadow_gate import ShadowGate
from edgelake.api.scoring import Scorer
from edgelake.settings import Settings
from edgelake.training.registry import Registry
from edgelake.lake.catalog import Lake
from edgelake.lake.sql_pool import QueryPool

TAGS = [
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics; no key needed."},
    {"name": "sql", "description": "Guarded read-only SQL over the lake, with time travel. Role: analyst."},
    {"name": "tables", "description": "The lake's catalog: tables, columns, versions and history. Role: analyst."},
    {"name": "models", "description": "The signed model registry and its artifacts. Role: analyst or device."},
    {"name": "score", "description": "Online fraud scores of transactions with the production fraud model. Role: producer."},
    {"name": "dashboard", "description": "The operators' dashboard: the page at / and its data. Role: analyst."},
    {"name": "devices", "description": "Edge devices: enrollment, heartbeats, model assignments, results. Role: device (its own)."},
    {"name": "audit", "description": "Who did what: every admin action and every refused request. Role: admin."},
]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the card feed, if any, the fraud shadow gate and the audit log's copy to the lake; on shutdown stop them,
    hand what is still queued for Kafka to the broker and close the producers."""
    feed: CardFeed | None = app.state.card_feed
    if feed is not None:
        feed.start()
    app.state.shadow_gate.start()
    app.state.audit_export.start()
    app.state.score_publisher.start()
    yield
    app.state.shadow_gate.close()
    app.state.audit_export.close()
    if feed is not None:
        feed.close()
    app.state.score_publisher.close()
    app.state.forwarder.close()
    app.state.sql_pool.close()
    app.state.audit.close()
    await app.state.limiter.aclose()


def create_app(
    settings: Settings, *, rate_per_s: float | None = None, burst: int | None = None, card_feed: bool = False, card_feed_start: Start = "end"
) -> FastAPI:
    """The API over ``settings``' lake and keys; each key may make ``rate_per_s`` requests a second, ``burst`` at once
    (default: the settings' ``api_rate_per_s`` and ``api_burst``).

    With ``card_feed``, a background ``api.card_feed.CardFeed`` adds the transactions topic's
    transactions (from its end at startup, or its beginning: ``card_feed_start``) to the
    scorer's card histories while the app runs.
    """
    app = FastAPI(
        title="edgelake API",
        version=version("edgelake"),
        summary="SQL over the lake, its catalog and the signed model registry.",
        description="Authenticate with `Authorization: Bearer <key>` (or `X-API-Key`); keys come from `edgelake keys create`. "
        "Errors are `application/problem+json` (RFC 9457).",
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    redact_access_log()
    registry = CollectorRegistry()
    app.state.settings = settings
    app.state.lake = Lake.from_settings(settings)
    control = ControlDb.from_settings(settings)
    app.state.model_registry = Registry.of(app.state.lake, control)
    app.state.keys = KeyStore(control, cache_s=settings.api_key_cache_s)
    app.state.limiter = rate_limiter(settings, rate_per_s or settings.api_rate_per_s, burst or settings.api_burst)
    app.state.registry = registry
    app.state.devices = DeviceStore(control)
    app.state.audit = AuditLog(control)
    Gauge(
        "edgelake_audit_entries_dropped", "Refused requests the audit log could not keep (its queue full, or its database down).",
        registry=registry,
    ).set_function(lambda: app.state.audit.dropped)
    app.state.audit_export = AuditExporter(settings, app.state.audit)
    app.state.forwarder = ResultForwarder(settings)
    app.state.topic_ends = TopicEnds(settings)
    app.state.sql_pool = QueryPool(settings.sql_workers)
    score_metrics = ScoreMetrics.create(registry)
    app.state.scorer = Scorer(settings, app.state.model_registry, score_metrics)
    registry.register(DriftMetrics(app.state.scorer.drift))
    app.state.score_publisher = (
        RedisScoreOutbox(settings, score_metrics) if settings.score_events == "redis" else ScorePublisher(settings, score_metrics)
    )
    feed_metrics = CardFeedMetrics.create(registry)
    app.state.shadow_gate = ShadowGate(settings, app.state.model_registry, app.state.audit)
    app.state.card_feed = CardFeed(settings, app.state.scorer, feed_metrics, start=card_feed_start) if card_feed else None
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(AuditMiddleware, audit=app.state.audit)
    app.add_middleware(LatencyMiddleware, histogram=request_histogram(registry))
    install_problem_handlers(app)
    routers = (audit.router, health.router, sql.router, tables.router, models.router, models.keys_router, score.router, devices.router, devices.rollout_router)
    for router in (*routers, dashboard.router, dashboard.page_router):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """The app over settings read from the environment, with its card feed; what ``edgelake serve`` runs in each worker."""
    return create_app(Settings(), card_feed=True)
