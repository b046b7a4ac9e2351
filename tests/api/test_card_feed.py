"""The card feed against a real broker and a real server with a trained fraud model in production.

Transactions produced to the topic after the server started reach the cards' features of
later scores; one both produced and scored counts once, in either order; what was on the
topic before the server started is left out (it starts at the topic's end); records that
are not transactions are counted as invalid. Without a broker, scoring is unaffected.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.broker import free_port
from edgelake.contracts import Transaction
from edgelake.kafka import EventProducer, ensure_topics
from edgelake.settings import Settings
from tests.api.conftest import Serve

T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def feed_settings(fraud_lake: Settings) -> Settings:
    """The session's lake with its production model, on fresh topics of this test's own."""
    settings = fraud_lake.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:10]}-"})
    ensure_topics(settings, settings.kafka_bootstrap_servers)
    return settings


@pytest.fixture
def token(fraud_lake: Settings) -> str:
    return KeyStore(ControlDb.from_settings(fraud_lake)).create("card feed producer", "producer")[1]


def transaction(card: str, minutes: float, amount: float) -> Transaction:
    return Transaction(
        event_id=f"tx-{uuid.uuid4().hex}", event_time=T0 + timedelta(minutes=minutes), card_id=card, merchant_id="m1",
        merchant_category="grocery", amount=amount, currency="EUR", channel="pos",
    )


def produce(settings: Settings, *transactions: Transaction) -> None:
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        producer.send_many(transactions)


def metric(http: httpx2.Client, name: str, **labels: str) -> float:
    """A sample's value from /metrics; 0 if absent."""
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(http: httpx2.Client, name: str, at_least: float, deadline_s: float = 20.0, **labels: str) -> None:
    until = time.monotonic() + deadline_s
    while (value := metric(http, name, **labels)) < at_least:
        assert time.monotonic() < until, f"{name}{labels} is {value}, expected at least {at_least}"
        time.sleep(0.1)


@pytest.fixture
def server(serve: Serve, feed_settings: Settings, token: str) -> Iterator[httpx2.Client]:
    produce(feed_settings, transaction("card-feed", -10, 1_000.0))  # before the server: left out
    app = create_app(feed_settings, rate_per_s=1e6, burst=10**6, card_feed=True)
    with serve(app) as url, httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        wait_for(http, "edgelake_card_feed_partitions", 1)  # positioned at the topic's end
        yield http


def score(http: httpx2.Client, t: Transaction) -> dict[str, Any]:
    response = http.post("/v1/score", content=t.to_bytes(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()["features"]


def test_the_topic_s_transactions_count_in_later_scores_once_each(server: httpx2.Client, feed_settings: Settings) -> None:
    http = server
    readiness = http.get("/readyz", params={"require": "fraud_model"})
    assert readiness.status_code == 200 and readiness.json()["status"] == "ready"
    assert readiness.json()["fraud_model"]["loaded"] and readiness.json()["fraud_model"]["version"] >= 1

    on_topic = [transaction("card-feed", minutes, amount) for minutes, amount in ((0, 10.0), (1, 20.0), (2, 30.0))]
    produce(feed_settings, *on_topic)
    wait_for(http, "edgelake_card_feed_records_total", 3, outcome="fed")

    later = score(http, transaction("card-feed", 3, 40.0))
    assert (later["tx_count_1h"], later["amount_sum_1h"], later["seconds_since_previous"]) == (4, 100.0, 60.0)
    # a topic transaction scored too (a retry, or its producer asking for a score) is not counted again
    again = score(http, on_topic[1])
    assert (again["tx_count_1h"], again["amount_sum_1h"]) == (2, 30.0)
    # the other order: scored first, then read from the topic
    scored = transaction("card-feed", 4, 50.0)
    assert score(http, scored)["tx_count_1h"] == 5
    produce(feed_settings, scored)
    wait_for(http, "edgelake_card_feed_records_total", 4, outcome="fed")
    last = score(http, transaction("card-feed", 5, 60.0))
    assert (last["tx_count_1h"], last["amount_sum_1h"]) == (6, 210.0)

    raw = KafkaProducer(bootstrap_servers=feed_settings.kafka_bootstrap_servers)
    raw.send(feed_settings.topic(Transaction.topic), b"not a transaction")
    raw.close()
    wait_for(http, "edgelake_card_feed_records_total", 1, outcome="invalid")
    assert metric(http, "edgelake_card_feed_lag") == 0

    # dated 9999 on the topic, it made the card's history look stale to every later transaction (zero velocity)
    far_ahead = transaction("card-feed", 0, 1.0).model_copy(update={"event_time": datetime(9999, 12, 31, tzinfo=UTC)})
    produce(feed_settings, far_ahead)
    wait_for(http, "edgelake_card_feed_records_total", 2, outcome="invalid")
    assert score(http, transaction("card-feed", 6, 70.0))["tx_count_1h"] == 7


def test_without_a_broker_scoring_is_unaffected(serve: Serve, fraud_lake: Settings, token: str) -> None:
    settings = fraud_lake.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    started = time.monotonic()
    with serve(create_app(settings, card_feed=True)) as url, httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert score(http, transaction("no-broker", 0, 5.0))["tx_count_1h"] == 1
        assert http.get("/readyz").json()["status"] == "ready"
        assert metric(http, "edgelake_card_feed_partitions") == 0
    assert time.monotonic() - started < 15
