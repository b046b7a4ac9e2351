"""The dashboard: ``GET /`` serves a static page (no key); ``GET /v1/dashboard`` is the JSON it draws (role analyst).

The page asks once for an API key, keeps it in the tab's ``sessionStorage`` and sends it as
``Authorization: Bearer``; opening ``/?key=elk_…`` stores that key and strips it from the
address bar (handy for scripts and kiosks, but the key then passes through the URL once).

Ingest lag: for each silver table, the Kafka offsets its Delta log has committed per topic
partition (what ingest recorded as ``app_transactions``), the time since the last ingest commit,
and the lag — records in the topic beyond those offsets — from the topics' end offsets, asked of
the broker at most every ``TopicEnds.ttl_s`` seconds (none while the broker cannot be reached).

Drift: the PSI of this server process's scored traffic against the production fraud version's training
distributions, per input, for the score and per watched field, at each snapshot its drift window kept and now.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any, Literal

from deltalake import DeltaTable
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from kafka.errors import KafkaError
from pydantic import BaseModel, Field

from edgelake.api.auth import require
from edgelake.api.devices import Device, DeviceStore
from edgelake.api.drift import DriftWindow
from edgelake.api.problems import PROBLEM_RESPONSES, Problem
from edgelake.api.routers.tables import TableSummary, list_tables
from edgelake.broker import configured_servers
from edgelake.contracts import EVENT_BY_TOPIC
from edgelake.kafka import broker_reachable, end_offsets
from edgelake.settings import Settings
from edgelake.lake.catalog import Lake, ingest_app_id
from edgelake.lake.sql import QueryFailed, QueryTimeout, run_query
from edgelake.lake.tables import SILVER
from edgelake.training import registry
from edgelake.training.drift import PSI_MAJOR, PSI_MODERATE
from edgelake.training.registry import Stage

SCORES_TABLE = SILVER["fraud-scores"].name
HISTOGRAM_BINS = 10
MAX_TIME_BUCKETS = 48
HISTORY_SCANNED = 50  # newest commits searched for the last ingest commit of a table
# Time buckets of the decisions chart, finest first, with their width in seconds.
BUCKETS: tuple[tuple[Literal["minute", "hour", "day"], int], ...] = (("minute", 60), ("hour", 3600), ("day", 86_400))
STATIC: dict[str, str] = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

page_router = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/v1", tags=["dashboard"], dependencies=[Depends(require("analyst"))], responses=PROBLEM_RESPONSES)


class IngestState(BaseModel):
    """How far ingest has committed one silver table, from the table's own Delta log."""

    table: str
    topic: str
    pipeline: str | None = Field(description="The pipeline of the last ingest commit; none if no ingest commit is in the recent log.")
    offsets: dict[int, int] = Field(description="Partition -> last Kafka offset committed into the table.")
    lag: int | None = Field(None, description="Records in the topic after the committed offsets; none if the broker cannot be reached.")
    last_ingest_commit: datetime | None
    seconds_since_commit: float | None


class ScoreBin(BaseModel):
    low: float
    high: float
    count: int


class DecisionBucket(BaseModel):
    """Decisions of the scores whose event time falls in ``[start, start + bucket)``."""

    start: datetime
    approve: int = 0
    review: int = 0
    decline: int = 0


class ScoreStats(BaseModel):
    total: int
    histogram: list[ScoreBin] = Field(description=f"{HISTOGRAM_BINS} equal bins of the fraud score over [0, 1].")
    bucket: Literal["minute", "hour", "day"] = Field(description="The width of each decisions bucket.")
    decisions: list[DecisionBucket] = Field(description="Buckets with at least one score, oldest first.")


class VersionCard(BaseModel):
    version: int
    stage: Stage
    created: datetime
    metrics: dict[str, float]
    plots: list[str] = Field(description="PNG artifacts, served by /v1/models/{name}/{version}/artifacts/{file}.")


class ModelCard(BaseModel):
    name: str
    production: int | None
    versions: list[VersionCard]


class DriftSeries(BaseModel):
    name: str
    kind: Literal["score", "field", "input"] = Field(description="The model's score, a transaction field it does not read, or one of its inputs.")
    psi: list[float] = Field(description="PSI at each of the drift's times.")


class Drift(BaseModel):
    """PSI of the traffic this server process scored with the production fraud version against its training distributions."""

    version: int
    window: int = Field(description="Most transactions the window holds: the latest scored.")
    transactions: int = Field(description="Transactions it holds now.")
    min_transactions: int = Field(description="Transactions it must hold before PSI is given.")
    moderate: float = Field(description="PSI from which a shift is moderate.")
    major: float = Field(description="PSI from which a shift is major (the alert's threshold).")
    times: list[datetime] = Field(description="Snapshots, oldest first, then now; empty while the window holds too few transactions.")
    series: list[DriftSeries]


class Dashboard(BaseModel):
    """Everything the dashboard page draws."""

    generated: datetime
    tables: list[TableSummary]
    ingest: list[IngestState]
    scores: ScoreStats | None = Field(description=f"None until {SCORES_TABLE} holds a score.")
    models: list[ModelCard]
    devices: list[Device]
    drift: Drift | None = Field(description="None while no production fraud version with training distributions is served here.")


# The page may be opened as /?key=…: no Referer may carry that address to the assets it loads, and the page runs
# only its own script, in no one else's frame.
PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@page_router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    """The dashboard's HTML; it fetches its data from /v1/dashboard with the key the user gives."""
    return HTMLResponse(_asset("index.html"), headers=PAGE_HEADERS)


@page_router.get("/dashboard/{file}")
def asset(file: str) -> Response:
    """The page's script and style sheet."""
    if file not in STATIC:
        raise Problem(404, f"no dashboard file '{file}'", kind="not-found", title="Not found")
    return Response(_asset(file), media_type=STATIC[file], headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})


@router.get("/dashboard", summary="What the dashboard at / shows: tables, ingest, scores, models, devices, drift")
def dashboard(request: Request) -> Dashboard:
    settings: Settings = request.app.state.settings
    lake: Lake = request.app.state.lake
    now = datetime.now(UTC)
    devices: DeviceStore = request.app.state.devices
    window = request.app.state.scorer.drift()
    return Dashboard(
        generated=now, tables=list_tables(request), ingest=with_lag(ingest_states(lake, now), request.app.state.topic_ends),
        scores=score_stats(settings, lake), models=model_cards(request.app.state.model_registry), devices=devices.devices(),
        drift=drift(window) if window is not None else None,
    )


def drift(window: DriftWindow) -> Drift:
    """The window's PSI at each snapshot and now: the score's, each watched field's, then each input's."""
    readings = window.history()
    if (now := window.reading()) is not None:
        readings.append(now)
    series: list[DriftSeries] = []
    if readings:
        series.append(DriftSeries(name="score", kind="score", psi=[r.score for r in readings]))
        series += [DriftSeries(name=name, kind="field", psi=[r.fields[name] for r in readings]) for name in readings[0].fields]
        series += [DriftSeries(name=name, kind="input", psi=[r.inputs[name] for r in readings]) for name in readings[0].inputs]
    return Drift(
        version=window.version, window=window.size, transactions=window.transactions, min_transactions=window.min_transactions,
        moderate=PSI_MODERATE, major=PSI_MAJOR, times=[r.time for r in readings], series=series,
    )


class TopicEnds:
    """The end offsets of the topics ingest reads, from the broker the settings name, cached for ``ttl_s`` seconds."""

    def __init__(self, settings: Settings, ttl_s: float = 5.0) -> None:
        self.servers = configured_servers(settings)
        self.ttl_s = ttl_s
        self._ends: dict[tuple[str, int], int] | None = None
        self._asked = -math.inf

    def get(self, topics: list[str]) -> dict[tuple[str, int], int] | None:
        """Each partition's end offset, or None while the broker cannot be reached."""
        if time.monotonic() - self._asked >= self.ttl_s:
            self._asked = time.monotonic()
            try:
                self._ends = end_offsets(self.servers, topics) if broker_reachable(self.servers) else None
            except KafkaError:
                self._ends = None
        return self._ends


def with_lag(states: list[IngestState], topic_ends: TopicEnds) -> list[IngestState]:
    """The states with each topic's records beyond its committed offsets."""
    ends = topic_ends.get([state.topic for state in states if state.pipeline])
    if ends is None:
        return states
    return [
        state.model_copy(update={"lag": sum(end - state.offsets.get(p, -1) - 1 for (topic, p), end in ends.items() if topic == state.topic)})
        if state.pipeline else state
        for state in states
    ]


def ingest_states(lake: Lake, now: datetime) -> list[IngestState]:
    """The committed offsets and last ingest commit of every silver table written so far."""
    states = []
    for topic, spec in SILVER.items():
        table = lake.find(spec.name)
        if table is not None:
            states.append(_ingest_state(table, spec.name, topic, now))
    return states


def _ingest_state(table: DeltaTable, name: str, topic: str, now: datetime) -> IngestState:
    """One table's state: the newest commit that names a pipeline is the last ingest commit."""
    for commit in table.history(HISTORY_SCANNED):
        pipeline, committed_topic = commit.get("pipeline"), commit.get("topic")
        if pipeline and committed_topic:
            when = datetime.fromtimestamp(commit["timestamp"] / 1000, UTC) if "timestamp" in commit else None
            partitions = range(EVENT_BY_TOPIC[topic].partitions)
            offsets = {p: o for p in partitions if (o := table.transaction_version(ingest_app_id(pipeline, committed_topic, p))) is not None}
            since = (now - when).total_seconds() if when else None
            return IngestState(
                table=name, topic=committed_topic, pipeline=pipeline, offsets=offsets, last_ingest_commit=when, seconds_since_commit=since
            )
    return IngestState(table=name, topic=topic, pipeline=None, offsets={}, last_ingest_commit=None, seconds_since_commit=None)


def score_stats(settings: Settings, lake: Lake) -> ScoreStats | None:
    """The histogram and decisions over time of the scores answered (not shadow ones) in the fraud-scores silver table; None if it holds none."""
    table = lake.find(SCORES_TABLE)
    if table is None:
        return None
    # The scores callers got: shadow scores are left out (a table written before shadow scoring has no such column).
    answered = f"{SCORES_TABLE} WHERE shadow IS NOT TRUE" if "shadow" in {f.name for f in table.schema().fields} else SCORES_TABLE
    span = _query(settings, lake, f"SELECT count(*) AS n, min(event_time) AS first, max(event_time) AS last FROM {answered}")[0]
    if not span["n"]:
        return None
    bins = _query(
        settings, lake,
        f"SELECT CASE WHEN score >= 1 THEN {HISTOGRAM_BINS - 1} ELSE CAST(floor(score * {HISTOGRAM_BINS}) AS INT) END AS bin, "
        f"count(*) AS n FROM {answered} GROUP BY 1",
    )
    unit = _bucket_unit((span["last"] - span["first"]).total_seconds())
    rows = _query(
        settings, lake,
        f"SELECT date_trunc('{unit}', event_time) AS start, decision, count(*) AS n FROM {answered} GROUP BY 1, 2 ORDER BY 1",
    )
    return ScoreStats(total=span["n"], histogram=_histogram(bins), bucket=unit, decisions=_decision_buckets(rows))


def _query(settings: Settings, lake: Lake, sql: str) -> list[dict[str, Any]]:
    """The rows of one dashboard query, as Python values; a failure is a 500 problem naming the query."""
    try:
        result = run_query(lake, sql, limit=10_000, max_bytes=settings.sql_byte_limit, timeout_s=settings.sql_timeout_s)
    except (QueryFailed, QueryTimeout) as error:
        raise Problem(500, f"the dashboard query over {SCORES_TABLE} failed: {error}", kind="dashboard-query-failed") from None
    return result.table.to_pylist()


def _bucket_unit(span_s: float) -> Literal["minute", "hour", "day"]:
    """The finest time unit that splits ``span_s`` seconds into at most MAX_TIME_BUCKETS buckets."""
    for unit, width in BUCKETS:
        if span_s / width < MAX_TIME_BUCKETS:
            return unit
    return "day"


def _histogram(rows: list[dict[str, Any]]) -> list[ScoreBin]:
    counts = {row["bin"]: row["n"] for row in rows}
    width = 1 / HISTOGRAM_BINS
    return [ScoreBin(low=round(i * width, 6), high=round((i + 1) * width, 6), count=counts.get(i, 0)) for i in range(HISTOGRAM_BINS)]


def _decision_buckets(rows: list[dict[str, Any]]) -> list[DecisionBucket]:
    """Rows of (start, decision, n) folded into one bucket per start."""
    buckets: dict[datetime, DecisionBucket] = {}
    for row in rows:
        start = row["start"] if row["start"].tzinfo else row["start"].replace(tzinfo=UTC)
        bucket = buckets.setdefault(start, DecisionBucket(start=start))
        setattr(bucket, row["decision"], getattr(bucket, row["decision"]) + row["n"])
    return [buckets[start] for start in sorted(buckets)]


def model_cards(models: registry.Registry) -> list[ModelCard]:
    """Every model's versions, newest first, with stage, metrics and plot files."""
    cards = []
    for name in registry.models(models):
        stages = registry.versions(models, name)
        versions = []
        for number in sorted(stages, reverse=True):
            manifest = registry.manifest(models, name, number)
            plots = sorted(file for file in manifest.files if file.lower().endswith(".png"))
            versions.append(VersionCard(version=number, stage=stages[number], created=manifest.created, metrics=manifest.metrics, plots=plots))
        cards.append(ModelCard(name=name, production=registry.current(models, name), versions=versions))
    return cards


def _asset(name: str) -> bytes:
    return files("edgelake.api.dashboard").joinpath(name).read_bytes()
