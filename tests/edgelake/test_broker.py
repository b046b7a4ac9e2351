"""The embedded Apache Kafka: start, answer, create topics, stop, restart with its data; a three-node cluster."""

import socket

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType

from edgelake.broker import BrokerUnavailable, EmbeddedBroker, bootstrap_servers, free_ports
from edgelake.contracts import EVENT_TYPES, Transaction
from edgelake.kafka import EventProducer, produce, read_topic
from edgelake.settings import Settings
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from support import JARS_DIR, embedded_kafka


def test_commands_that_need_kafka_start_the_embedded_broker(tmp_path) -> None:
    settings = Settings(kafka_bootstrap_servers="", broker_port=free_ports(2), data_dir=tmp_path, jars_dir=JARS_DIR)
    broker = EmbeddedBroker.from_settings(settings)
    assert not broker.status().running
    try:
        servers = bootstrap_servers(settings)
        status = broker.status()
        assert servers == status.bootstrap_servers and status.running and status.answering
        assert broker.start().pids == status.pids  # starting again reuses the running broker
        consumer = KafkaConsumer(bootstrap_servers=servers)
        partitions = {t.topic: len(consumer.partitions_for_topic(t.topic) or ()) for t in EVENT_TYPES}
        consumer.close()
        assert partitions == {t.topic: t.partitions for t in EVENT_TYPES}
        log = broker.node(1).log_file.read_text()
        assert "Kafka Server started" in log and "KafkaRaftServer" in log  # Apache Kafka, in KRaft mode, logging to its file
    finally:
        assert broker.stop()
    assert not broker.status().running
    assert not broker.stop()


def test_events_outlive_a_restart(tmp_path) -> None:
    settings = Settings(broker_port=free_ports(2), data_dir=tmp_path, jars_dir=JARS_DIR)
    broker = EmbeddedBroker.from_settings(settings)
    feed = list(transactions(SyntheticConfig(seed=9), 50))
    try:
        servers = bootstrap_servers(settings)
        with EventProducer(settings, servers) as producer:
            assert produce(producer, feed).acknowledged == 50
        broker.stop()
        broker.start()
        ids = {Transaction.parse(r.value).event_id for r in read_topic(servers, "transactions")}
        assert ids == {tx.event_id for tx in feed}
    finally:
        broker.stop()


def test_a_taken_port_is_reported(tmp_path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = EmbeddedBroker(squatter.getsockname()[1], tmp_path, JARS_DIR)
        with pytest.raises(BrokerUnavailable, match="taken by another process"):
            broker.start()


def test_missing_jars_are_reported_with_the_command_that_fetches_them(tmp_path) -> None:
    broker = EmbeddedBroker(free_ports(2), tmp_path / "broker", tmp_path / "no-jars")
    with pytest.raises(BrokerUnavailable, match="edgelake jars fetch kafka"):
        broker.start()


def test_three_brokers_replicate_every_topic_with_two_in_sync(tmp_path) -> None:
    cluster = embedded_kafka(tmp_path / "cluster", brokers=3)
    try:
        settings = Settings(kafka_bootstrap_servers=cluster.bootstrap_servers, data_dir=tmp_path / "data")
        assert len(cluster.bootstrap_servers.split(",")) == 3
        bootstrap_servers(settings)
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
        try:
            names = [settings.topic(event.topic) for event in EVENT_TYPES]
            for topic in admin.describe_topics(names):
                assert {len(p["replica_nodes"]) for p in topic["partitions"]} == {3}, topic["name"]
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
            isr = {name: configs["min.insync.replicas"]["value"] for name, configs in described["topic"].items()}
            assert isr == {name: "2" for name in names}
        finally:
            admin.close()
    finally:
        cluster.stop()


def test_settings_come_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EDGELAKE_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("EDGELAKE_LAKE_ROOT", "s3://lake/edgelake")
    monkeypatch.setenv("EDGELAKE_TOPIC_PREFIX", "prod.")
    settings = Settings()
    assert not settings.embedded_broker
    assert settings.lake_root == "s3://lake/edgelake"
    assert settings.topic("transactions") == "prod.transactions"
    monkeypatch.setenv("EDGELAKE_BROKER_COUNT", "0")
    with pytest.raises(ValueError, match="broker_count"):
        Settings()
