"""The producer API against real brokers: every source, read back and validated; bad input refused."""

import time
from collections.abc import Iterator

import pytest

from support import embedded_kafka, isolated_settings
from edgelake.contracts import EVENT_BY_TOPIC, Event, InvalidEvent, Transaction
from edgelake.kafka import EventProducer, produce, read_topic
from edgelake.settings import Settings
from edgelake.ingest.sources import SourceOptions, source_events
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions

FEEDS = [
    ("transactions", "ulb"),
    ("labels", "ulb"),
    ("transactions", "synthetic"),
    ("labels", "synthetic"),
    ("iot", "shuttle"),
    ("images", "fashion-mnist"),
]


def read_back(settings: Settings, topic: str) -> Iterator[tuple[bytes | None, Event]]:
    """Every record of a logical topic, validated against its contract."""
    event_type = EVENT_BY_TOPIC[topic]
    for record in read_topic(settings.kafka_bootstrap_servers, settings.topic(topic)):
        yield record.key, event_type.parse(record.value)


@pytest.mark.parametrize(("kind", "source"), FEEDS)
def test_each_source_lands_valid_keyed_events(settings: Settings, ulb_csv, kind: str, source: str) -> None:
    options = SourceOptions(count=400, path=ulb_csv if source == "ulb" else None)
    sent = list(source_events(kind, source, options, settings))
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        report = produce(producer, sent)
    assert (report.sent, report.acknowledged, report.failed) == (400, 400, 0)

    received = list(read_back(settings, sent[0].topic))
    assert sorted(e.event_id for _, e in received) == sorted(e.event_id for e in sent)
    by_id = {e.event_id: e for e in sent}
    for key, event in received:
        assert event == by_id[event.event_id]
        assert key == event.key


def test_file_source_replays_a_users_csv(settings: Settings, tmp_path) -> None:
    csv = tmp_path / "payments.csv"
    csv.write_text("when,card,amount,shop,fraud,risk\n2024-03-01T10:00:00Z,11,9.5,s1,0,0.1\n2024-03-01T10:01:00Z,12,900,s2,1,0.9\n")
    mapping = {"event_time": "when", "card_id": "card", "amount": "amount", "merchant_id": "shop", "label": "fraud"}
    options = SourceOptions(path=csv, mapping=mapping)
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        produce(producer, source_events("transactions", "file", options, settings))
        produce(producer, source_events("labels", "file", options, settings))
    txs = sorted((e for _, e in read_back(settings, "transactions")), key=lambda e: e.event_id)
    labels = sorted((e for _, e in read_back(settings, "fraud-labels")), key=lambda e: e.event_id)
    assert [t.card_id for t in txs] == ["11", "12"]
    assert txs[1].attributes == {"risk": 0.9}  # the label column never leaks into attributes
    assert [(lb.transaction_id, lb.is_fraud) for lb in labels] == [("payments-0", False), ("payments-1", True)]


def test_invalid_event_in_a_batch_is_refused_and_nothing_is_sent(settings: Settings) -> None:
    good = [tx.model_dump() for tx in transactions(SyntheticConfig(seed=3), 5)]
    bad = {**good[2], "amount": float("nan")}
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        with pytest.raises(InvalidEvent) as error:
            producer.send_many([*good[:2], bad, *good[3:]], Transaction)
        assert error.value.field == "amount"
        assert producer.report.sent == 0
        with pytest.raises(InvalidEvent, match="'card_id'"):
            producer.send({k: v for k, v in good[0].items() if k != "card_id"}, Transaction)
        with pytest.raises(InvalidEvent, match="'amount'"):
            producer.send({**good[0], "amount": "12"}, Transaction)
        assert producer.send_many(good, Transaction) == 5
    assert len(list(read_back(settings, "transactions"))) == 5


def test_rate_limits_throughput(settings: Settings) -> None:
    feed = list(transactions(SyntheticConfig(seed=4), 300))
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        started = time.monotonic()
        report = produce(producer, feed, rate=1000)
        elapsed = time.monotonic() - started
    assert report.acknowledged == 300
    assert 0.29 <= elapsed < 3.0


def test_undeliverable_events_are_counted_as_failed(tmp_path) -> None:
    broker = embedded_kafka(tmp_path / "broker")
    settings = isolated_settings(broker.bootstrap_servers, tmp_path)
    first, *rest = transactions(SyntheticConfig(seed=5), 3)
    producer = EventProducer(settings, broker.bootstrap_servers, delivery_timeout_ms=3000, request_timeout_ms=1000)
    try:
        producer.send(first)
        producer.flush()
        broker.stop()
        producer.send_many(rest)
    finally:
        report = producer.close(timeout_s=15)
        broker.stop()
    assert (report.sent, report.acknowledged, report.failed) == (3, 1, 2)
    assert all(error.startswith(("syn-5-000000001", "syn-5-000000002")) for error in report.errors)
