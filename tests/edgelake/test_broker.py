"""The embedded broker: start, answer, create topics, stop, restart with its data."""

import socket

import pytest
from kafka import KafkaConsumer

from edgelake.broker import BrokerUnavailable, EmbeddedBroker, bootstrap_servers, free_port
from edgelake.contracts import EVENT_TYPES, Transaction
from edgelake.kafka import read_topic
from edgelake.settings import Settings
from ingest.producer import EventProducer, produce
from ingest.sources.synthetic import SyntheticConfig, transactions


@pytest.mark.parametrize("impl", ["noida", "tansu"])
def test_commands_that_need_kafka_start_the_embedded_broker(tmp_path, impl: str) -> None:
    settings = Settings(kafka_bootstrap_servers="", broker_impl=impl, broker_port=free_port(), data_dir=tmp_path)
    broker = EmbeddedBroker.from_settings(settings)
    assert not broker.status().running
    try:
        servers = bootstrap_servers(settings)
        status = broker.status()
        assert servers == status.bootstrap_servers and status.running and status.answering
        assert broker.start().pid == status.pid  # starting again reuses the running broker
        consumer = KafkaConsumer(bootstrap_servers=servers)
        partitions = {t.topic: len(consumer.partitions_for_topic(t.topic) or ()) for t in EVENT_TYPES}
        consumer.close()
        assert partitions == {t.topic: t.partitions for t in EVENT_TYPES}
    finally:
        assert broker.stop()
    assert not broker.status().running
    assert not broker.stop()


def test_noida_keeps_events_across_restarts(tmp_path) -> None:
    settings = Settings(broker_port=free_port(), data_dir=tmp_path)
    broker = EmbeddedBroker.from_settings(settings)
    feed = list(transactions(SyntheticConfig(seed=9), 50))
    try:
        servers = bootstrap_servers(settings)
        with EventProducer(settings, servers) as producer:
            assert produce(producer, feed).acknowledged == 50
        broker.stop()
        broker.start()
        ids = {Transaction.parse(r.value).event_id for r in read_topic(servers, "transactions", idle_s=1.0)}
        assert ids == {tx.event_id for tx in feed}
    finally:
        broker.stop()


def test_a_taken_port_is_reported(tmp_path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = EmbeddedBroker("noida", squatter.getsockname()[1], tmp_path)
        with pytest.raises(BrokerUnavailable, match="taken by another process"):
            broker.start()


def test_settings_come_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EDGELAKE_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("EDGELAKE_LAKE_ROOT", "s3://lake/edgelake")
    monkeypatch.setenv("EDGELAKE_TOPIC_PREFIX", "prod.")
    settings = Settings()
    assert not settings.embedded_broker
    assert settings.lake_root == "s3://lake/edgelake"
    assert settings.topic("transactions") == "prod.transactions"
    monkeypatch.setenv("EDGELAKE_BROKER_IMPL", "kafka-in-a-teacup")
    with pytest.raises(ValueError, match="broker_impl"):
        Settings()
