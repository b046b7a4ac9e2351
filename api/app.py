"""The edgelake API as a FastAPI app: ``create_app(settings)``, or ``app_from_env`` for uvicorn's factory mode.

Every error is ``application/problem+json`` (RFC 9457). Every /v1 route names the roles it
admits; keys, their roles and rate limits live in :mod:`api.keys` and :mod:`api.auth`.
Metrics and rate limits are kept per server process (per uvicorn worker).
"""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api.keys import KeyStore, keys_path
from api.metrics import LatencyMiddleware, request_histogram
from api.problems import install_problem_handlers
from api.ratelimit import RateLimiter
from api.routers import health, models, sql, tables
from edgelake.settings import Settings

TAGS = [
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics; no key needed."},
    {"name": "sql", "description": "Guarded read-only SQL over the lake, with time travel. Role: analyst."},
    {"name": "tables", "description": "The lake's catalog: tables, columns, versions and history. Role: analyst."},
    {"name": "models", "description": "The signed model registry and its artifacts. Role: analyst or device."},
]


def create_app(settings: Settings, *, rate_per_s: float = 50.0, burst: int = 100) -> FastAPI:
    """The API over ``settings``' lake and keys; each key may make ``rate_per_s`` requests a second, ``burst`` at once."""
    app = FastAPI(
        title="edgelake API",
        version=version("edgelake"),
        summary="SQL over the lake, its catalog and the signed model registry.",
        description="Authenticate with `Authorization: Bearer <key>` (or `X-API-Key`); keys come from `edgelake keys create`. "
        "Errors are `application/problem+json` (RFC 9457).",
        openapi_tags=TAGS,
    )
    registry = CollectorRegistry()
    app.state.settings = settings
    app.state.keys = KeyStore(keys_path(settings.data_dir))
    app.state.limiter = RateLimiter(rate_per_s, burst)
    app.state.registry = registry
    app.add_middleware(LatencyMiddleware, histogram=request_histogram(registry))
    install_problem_handlers(app)
    for router in (health.router, sql.router, tables.router, models.router):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """The app over settings read from the environment; what ``edgelake serve`` runs in each worker."""
    return create_app(Settings())
