"""Failover on a three-broker Apache Kafka cluster: the partitions' leader SIGKILLed again and again
while events are produced and ingested and the API scores; nothing acknowledged is lost or doubled."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx2
import pytest
from deltalake import DeltaTable
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.broker import EmbeddedBroker
from edgelake.contracts import FraudScore, Transaction
from edgelake.settings import Settings
from edgelake.kafka import EventProducer, produce
from edgelake.ingest.sources import synthetic
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import SILVER, table_uri
from support import copy_stage_books, embedded_kafka, isolated_settings
from edgelake.training import registry

EVENTS = 50_000
PRODUCE_RATE = 700  # events/s: the run outlasts the kills
KILLS = 5
SCORE_RATE = 20  # requests/s
SCORING = synthetic.SyntheticConfig(seed=41, cards=50, merchants=40)
T = TypeVar("T")


@dataclass
class ScoreLog:
    """Every /v1/score call: when, how long, its status and the score id it answered."""

    calls: list[tuple[float, float, int]] = field(default_factory=list)  # (started, seconds, status)
    score_ids: list[str] = field(default_factory=list)

    def summary(self, windows: list[tuple[float, float]]) -> dict[str, object]:
        def stats(calls: list[tuple[float, float, int]]) -> dict[str, float | int]:
            latencies = sorted(seconds for _, seconds, _ in calls)
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
            return {"requests": len(calls), "errors": sum(status != 200 for *_, status in calls), "p99_ms": round(p99 * 1000, 1)}

        during = [c for c in self.calls if any(start <= c[0] <= end for start, end in windows)]
        return {"whole_run": stats(self.calls), "while_a_broker_was_down": stats(during)}


def _score(url: str, token: str, stop: threading.Event, log: ScoreLog) -> None:
    with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for transaction in synthetic.transactions(SCORING, 1_000_000):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                response = client.post("/v1/score", content=transaction.to_bytes(), headers={"Content-Type": "application/json"})
                status = response.status_code
            except httpx2.HTTPError:
                status = 0
            log.calls.append((started, time.monotonic() - started, status))
            if status == 200:
                log.score_ids.append(response.json()["score_id"])
            stop.wait(max(0.0, 1 / SCORE_RATE - (time.monotonic() - started)))


def _ask_admin(servers: str, question: Callable[[KafkaAdminClient], T], timeout_s: float = 60) -> T:
    """``question(admin)``, asked again while the cluster cannot answer (a node down, an election under way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=5000)
            try:
                return question(admin)
            finally:
                admin.close()
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _leader(servers: str, topic: str, partition: int) -> int:
    (described,) = _ask_admin(servers, lambda admin: admin.describe_topics([topic]))
    return next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == partition)


def _wait_in_sync(servers: str, topics: list[str], timeout_s: float = 120) -> None:
    """Until every partition of ``topics`` has all three replicas in sync again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = _ask_admin(servers, lambda admin: admin.describe_topics(topics))
        if all(len(p["isr_nodes"]) == 3 for t in described for p in t["partitions"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"replicas of {topics} not back in sync within {timeout_s:.0f}s")


def _silver_ids(settings: Settings, event_type: type) -> list[str]:
    uri = table_uri(settings.lake_root, SILVER[event_type.topic])
    try:
        return DeltaTable(uri).to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()
    except Exception:  # noqa: BLE001 - the table may not exist yet
        return []


@pytest.mark.chaos
def test_leader_kills_lose_and_double_nothing_while_the_api_scores(fraud_lake: Settings, serve, tmp_path: Path) -> None:
    cluster: EmbeddedBroker = embedded_kafka(tmp_path / "cluster", brokers=3)
    try:
        settings = isolated_settings(cluster.bootstrap_servers, tmp_path / "data").model_copy(
            update={"registry_dir": registry.registry_root(Lake.from_settings(fraud_lake)), "score_model_check_s": 5.0}
        )
        copy_stage_books(fraud_lake, settings)
        token = KeyStore(ControlDb.from_settings(settings)).create("failover", "producer")[1]
        topics = [settings.topic(Transaction.topic), settings.topic(FraudScore.topic)]
        env = {
            **os.environ, "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": settings.topic_prefix,
            "EDGELAKE_LAKE_ROOT": settings.lake_root, "EDGELAKE_DATA_DIR": str(settings.data_dir), "EDGELAKE_LOG_FORMAT": "json",
        }
        ingester_log = tmp_path / "ingester.log"
        with ingester_log.open("wb") as stderr:
            ingester = subprocess.Popen(
                [sys.executable, "-m", "edgelake", "ingest", "run", "--topics", Transaction.topic, "--topics", FraudScore.topic, "--max-wait", "1"],
                env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )
        feed = list(synthetic.transactions(synthetic.SyntheticConfig(seed=40), EVENTS))
        producer = EventProducer(settings, cluster.bootstrap_servers)
        reports = []
        producing = threading.Thread(target=lambda: reports.append(produce(producer, feed, rate=PRODUCE_RATE)))
        scores, stop = ScoreLog(), threading.Event()
        with serve(create_app(settings, rate_per_s=10_000, burst=10_000)) as url:
            scoring = threading.Thread(target=_score, args=(url, token, stop, scores))
            producing.start()
            scoring.start()
            rng, down = random.Random(42), []
            for _ in range(KILLS):
                time.sleep(rng.uniform(2, 5))
                topic = rng.choice(topics)
                leader = _leader(cluster.bootstrap_servers, topic, rng.randrange(2))
                started = time.monotonic()
                assert cluster.node(leader).kill()
                time.sleep(rng.uniform(3, 8))
                cluster.start()
                down.append((started, time.monotonic()))
                _wait_in_sync(cluster.bootstrap_servers, topics)
            producing.join(timeout=300)
            stop.set()
            scoring.join(timeout=60)
        report = producer.close(timeout_s=120)
        assert reports and (report.acknowledged, report.failed) == (EVENTS, 0), report.errors[:5]

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (
            len(_silver_ids(settings, Transaction)) < EVENTS or len(_silver_ids(settings, FraudScore)) < len(scores.score_ids)
        ):
            assert ingester.poll() is None, ingester_log.read_text()[-3000:]
            time.sleep(2)
        ingester.terminate()
        ingester.wait(timeout=60)

        summary = scores.summary(down)
        (tmp_path / "failover.json").write_text(json.dumps(summary))
        print(f"failover: {len(down)} leaders killed; scoring {summary}")
        transactions = _silver_ids(settings, Transaction)
        assert len(transactions) == len(set(transactions)), "a transaction is twice in silver"
        assert set(transactions) == {tx.event_id for tx in feed}, "an acknowledged transaction is missing from silver"
        landed = _silver_ids(settings, FraudScore)
        assert len(landed) == len(set(landed)), "a score is twice in silver"
        assert set(scores.score_ids) <= set(landed), f"{len(set(scores.score_ids) - set(landed))} answered scores missing from silver"
        assert summary["whole_run"]["errors"] == 0, summary  # type: ignore[index]
        assert summary["while_a_broker_was_down"]["requests"] > 0, summary  # type: ignore[index]
    finally:
        cluster.stop()
