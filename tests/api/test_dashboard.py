"""The dashboard: /v1/dashboard's access and shape, and the page at / rendered by headless Chromium against a real server."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx2
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from kafka import KafkaProducer

from edgelake.api.app import create_app
from edgelake.api.routers.dashboard import score_stats
from edgelake.control_db import ControlDb
from edgelake.api.keys import ROLES, KeyStore
from edgelake.bench.silver import silver_rows
from edgelake.broker import EmbeddedBroker
from edgelake.contracts import FraudScore
from edgelake.kafka import ensure_topics, producer_config
from edgelake.settings import Settings
from edgelake.ingest.sources import synthetic
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import SILVER, table_uri
from support import append_silver
from tests.api.conftest import publish_model, serving
from tests.api.test_errors_and_auth import assert_problem

SCORES = 30  # one every 6 minutes from 10:00: three hour buckets of 10, and 3 scores in each of the 10 score bins
FIRST_SCORE = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
SCORES_PARTITION, SCORES_FIRST_OFFSET = 1, 100
PIPELINE = "test-ingest"
UNINGESTED = 7  # records in the scores topic after the committed offsets
TRANSACTIONS = 50


@dataclass(frozen=True)
class Board:
    url: str
    tokens: dict[str, str]
    device_id: str

    def client(self, role: str | None = None) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)


def fraud_scores() -> list[FraudScore]:
    """SCORES scores spread evenly over [0, 1) and three hours, with the decisions their score leads to."""
    events = []
    for i in range(SCORES):
        score = (i + 0.5) / SCORES
        decision = "decline" if score >= 0.9 else "review" if score >= 0.6 else "approve"
        events.append(
            FraudScore(
                event_id=f"score-{i:04d}", event_time=FIRST_SCORE + timedelta(minutes=6 * i), transaction_id=f"tx-{i}",
                card_id=f"card-{i % 4}", score=score, decision=decision, model_name="fraud", model_version=1, latency_ms=1.5,
            )
        )
    return events


def commit_scores_as_ingest(lake_root: str, events: list[FraudScore], topic: str) -> None:
    """Commit the scores to silver with the offsets and metadata an ingest commit of ``topic`` (broker-side name) carries."""
    spec = SILVER[FraudScore.topic]
    uri = table_uri(lake_root, spec)
    DeltaTable.create(uri, spec.schema, mode="ignore", partition_by=list(spec.partition_by), name=spec.name)
    last = SCORES_FIRST_OFFSET + len(events) - 1
    write_deltalake(
        uri, silver_rows(events, SCORES_PARTITION, SCORES_FIRST_OFFSET), mode="append", schema_mode="merge",
        commit_properties=CommitProperties(
            app_transactions=[Transaction(f"{PIPELINE}/{topic}/{SCORES_PARTITION}", last)],
            custom_metadata={"pipeline": PIPELINE, "topic": topic},
        ),
    )


def enroll_device(admin: httpx2.Client, anonymous: httpx2.Client) -> str:
    """A device enrolled through the API that reported running fraud v1; its id."""
    token = admin.post("/v1/devices/enrollment-tokens", json={}).json()["token"]
    enrolled = anonymous.post("/v1/devices/enroll", json={"enrollment_token": token, "device_name": "gate-dash"}).json()
    device_id = enrolled["device_id"]
    beat = anonymous.post(
        f"/v1/devices/{device_id}/heartbeat", json={"models": {"fraud": 1}}, headers={"Authorization": f"Bearer {enrolled['device_token']}"}
    )
    assert beat.status_code == 200, beat.text
    return device_id


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, kafka: EmbeddedBroker) -> Iterator[Board]:
    """A server over a lake of its own: silver transactions, ingest-committed fraud scores (with more records in
    their topic than committed: the lag), a model and a device."""
    base = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        data_dir=base / "data", lake_root=str(base / "lake"), sql_timeout_s=30,
        kafka_bootstrap_servers=kafka.bootstrap_servers, topic_prefix=f"dash{uuid.uuid4().hex[:8]}-",
    )
    append_silver(settings.lake_root, list(synthetic.transactions(synthetic.SyntheticConfig(seed=9, cards=5, merchants=5), TRANSACTIONS)))
    scores_topic = settings.topic(FraudScore.topic)
    commit_scores_as_ingest(settings.lake_root, fraud_scores(), scores_topic)
    ensure_topics(settings, kafka.bootstrap_servers)
    producer = KafkaProducer(**producer_config(kafka.bootstrap_servers))
    for _ in range(SCORES_FIRST_OFFSET + SCORES + UNINGESTED):
        producer.send(scores_topic, value=b"{}", partition=SCORES_PARTITION)
    producer.flush()
    producer.close()
    publish_model(settings, base / "run")
    store = KeyStore(ControlDb.from_settings(settings))
    tokens = {role: store.create(f"test {role}", role)[1] for role in ROLES}
    with serving(create_app(settings)) as url:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['admin']}"}) as admin, httpx2.Client(base_url=url) as anonymous:
            device_id = enroll_device(admin, anonymous)
        yield Board(url, tokens, device_id)


def test_dashboard_data_needs_an_analyst_key(board: Board) -> None:
    with board.client() as anonymous:
        assert assert_problem(anonymous.get("/v1/dashboard"), 401)["type"].endswith("unauthenticated")
    with board.client("device") as device:
        assert assert_problem(device.get("/v1/dashboard"), 403)["type"].endswith("forbidden")
    with board.client("producer") as producer:
        assert assert_problem(producer.get("/v1/dashboard"), 403)["type"].endswith("forbidden")


def test_dashboard_data_shape(board: Board) -> None:
    with board.client("analyst") as analyst:
        response = analyst.get("/v1/dashboard")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"generated", "tables", "ingest", "scores", "models", "devices", "drift"}
    assert body["drift"] is None  # no production fraud model served
    rows = {t["name"]: t["rows"] for t in body["tables"] if t["written"]}
    assert rows == {"silver_transactions": TRANSACTIONS, "silver_fraud_scores": SCORES}
    assert all(t["last_commit"] for t in body["tables"] if t["written"])

    ingest = {state["table"]: state for state in body["ingest"]}
    scores_ingest = ingest["silver_fraud_scores"]
    assert scores_ingest["pipeline"] == PIPELINE
    assert scores_ingest["offsets"] == {str(SCORES_PARTITION): SCORES_FIRST_OFFSET + SCORES - 1}
    assert scores_ingest["lag"] == UNINGESTED
    assert 0 <= scores_ingest["seconds_since_commit"] < 600
    assert ingest["silver_transactions"]["pipeline"] is None  # written by a test helper, not by ingest

    scores = body["scores"]
    assert scores["total"] == SCORES
    assert [b["count"] for b in scores["histogram"]] == [3] * 10
    assert scores["bucket"] == "hour"
    assert [(b["start"][:19], b["approve"], b["review"], b["decline"]) for b in scores["decisions"]] == [
        ("2026-03-01T10:00:00", 10, 0, 0), ("2026-03-01T11:00:00", 8, 2, 0), ("2026-03-01T12:00:00", 0, 7, 3),
    ]

    (model,) = body["models"]
    assert (model["name"], model["production"]) == ("fraud", None)
    assert [(v["version"], v["stage"], v["metrics"], v["plots"]) for v in model["versions"]] == [(1, "candidate", {"auprc": 0.8}, ["plots/roc.png"])]

    (device,) = body["devices"]
    assert (device["id"], device["name"], device["last_heartbeat"]["models"]) == (board.device_id, "gate-dash", {"fraud": 1})


def test_score_figures_count_the_answered_scores_not_the_shadow_ones(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", lake_root=str(tmp_path / "lake"))
    answered = fraud_scores()
    shadow = [
        score.model_copy(update={"event_id": f"shadow-{score.event_id}", "score": 0.99, "decision": "decline", "model_version": 2, "shadow": True})
        for score in answered
    ]
    append_silver(settings.lake_root, answered + shadow)
    stats = score_stats(settings, Lake.from_settings(settings))
    assert stats is not None and stats.total == SCORES
    assert [b.count for b in stats.histogram] == [3] * 10 and sum(b.decline for b in stats.decisions) == 3


def test_page_and_assets_need_no_key(board: Board) -> None:
    with board.client() as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/dashboard/dashboard.js">' in page.text
        assert anonymous.get("/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")
        assert anonymous.get("/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
        assert anonymous.get("/dashboard/secret.py").status_code == 404


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)


class Dom(HTMLParser):
    """Every element of a page with its attributes and the text directly inside it."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in {"img", "input", "meta", "link", "br", "line", "rect"}:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and (cls is None or cls in e.attrs.get("class", "").split())]

    def texts(self, tag: str, cls: str | None = None) -> list[str]:
        return ["".join(e.text).strip() for e in self.find(tag, cls)]


def chromium() -> str:
    """The Chromium binary; the test fails (not skips) without it, since `make setup` installs it."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run `make setup` (infra/system-packages.sh installs Debian's chromium)")
    return binary


def rendered(url: str, tmp_path: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts and fetches."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_renders_the_charts_in_chromium(board: Board, tmp_path: Path) -> None:
    dom = Dom(rendered(f"{board.url}/?key={board.tokens['analyst']}", tmp_path))
    (body,) = dom.find("body")
    assert body.attrs.get("data-state") == "ready", dom.texts("span")
    (login,) = [e for e in dom.find("form") if e.attrs.get("id") == "login"]
    assert "hidden" in login.attrs  # the key came in the URL: no form

    bars = dom.find("rect", "bar")
    assert [int(bar.attrs["data-count"]) for bar in bars] == [3] * 10
    buckets = dom.find("g", "bucket")
    assert [int(b.attrs["data-total"]) for b in buckets] == [10, 10, 10]
    assert [len(dom.find("rect", decision)) for decision in ("approve", "review", "decline")] == [3, 3, 3]

    table_names = [row for row in dom.texts("td") if row.startswith("silver_")]
    assert {"silver_transactions", "silver_fraud_scores"} <= set(table_names)
    assert str(TRANSACTIONS) in dom.texts("td") and str(SCORES) in dom.texts("td")
    assert f"p{SCORES_PARTITION}: {SCORES_FIRST_OFFSET + SCORES - 1}" in dom.texts("td")

    assert dom.texts("h3", "model-name") == ["fraud (production: none)"]
    assert {"v1", "candidate", "0.8000"} <= set(dom.texts("td"))
    (plot,) = dom.find("img")
    assert plot.attrs["src"].startswith("blob:") and plot.attrs["data-file"] == "plots/roc.png"

    assert {"gate-dash", board.device_id, "fraud v1"} <= set(dom.texts("td"))


def test_page_without_a_key_asks_for_one(board: Board, tmp_path: Path) -> None:
    dom = Dom(rendered(f"{board.url}/", tmp_path))
    (login,) = [e for e in dom.find("form") if e.attrs.get("id") == "login"]
    assert "hidden" not in login.attrs
    assert not dom.find("svg")
