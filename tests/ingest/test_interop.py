"""Independent Kafka clients against edgelake: Debian's kcat and librdkafka (confluent-kafka) produce the
contracts' JSON and ingest lands it; librdkafka reads back what ``edgelake produce`` sent, byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from deltalake import DeltaTable

from edgelake.contracts import FraudLabel, IoTReading, Transaction
from edgelake.settings import Settings
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources import SourceOptions, source_events
from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions
from edgelake.lake.tables import SILVER, table_uri
from support import DATASET_CACHE


def _silver_ids(settings: Settings, topic: str) -> list[str]:
    return DeltaTable(table_uri(settings.lake_root, SILVER[topic])).to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()


def test_events_from_kcat_and_librdkafka_land_in_silver(settings: Settings, ulb_csv: Path) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is missing: run infra/system-packages.sh (Debian package kcat)"
    by_kcat = list(transactions(SyntheticConfig(seed=31), 300))
    lines = b"".join(tx.key + b"\t" + tx.to_bytes() + b"\n" for tx in by_kcat)
    sent = subprocess.run(
        [kcat, "-P", "-b", settings.kafka_bootstrap_servers, "-t", settings.topic(Transaction.topic), "-K", "\t", "-X", "acks=all"],
        input=lines, capture_output=True, timeout=60, check=False,
    )
    assert sent.returncode == 0, sent.stderr.decode()

    by_librdkafka = list(labels(SyntheticConfig(seed=31), 200))
    readings = list(source_events("iot", "shuttle", SourceOptions(count=200), settings))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True})
    for event in [*by_librdkafka, *readings]:
        producer.produce(settings.topic(type(event).topic), key=event.key, value=event.to_bytes())
    assert producer.flush(30) == 0

    ingest(settings, IngestOptions(topics=(Transaction.topic, FraudLabel.topic, IoTReading.topic)), once=True)
    assert sorted(_silver_ids(settings, Transaction.topic)) == sorted(tx.event_id for tx in by_kcat)
    assert sorted(_silver_ids(settings, FraudLabel.topic)) == sorted(label.event_id for label in by_librdkafka)
    assert sorted(_silver_ids(settings, IoTReading.topic)) == sorted(reading.event_id for reading in readings)


def test_librdkafka_reads_back_what_edgelake_produce_sent_byte_for_byte(settings: Settings) -> None:
    env = {
        **os.environ, "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "EDGELAKE_TOPIC_PREFIX": settings.topic_prefix, "EDGELAKE_DATA_DIR": str(settings.data_dir), "EDGELAKE_CACHE_DIR": str(DATASET_CACHE),
    }
    produced = subprocess.run(
        [sys.executable, "-m", "edgelake", "produce", "transactions", "--source", "synthetic", "--count", "1000", "--seed", "32"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert produced.returncode == 0, produced.stderr

    topic = settings.topic(Transaction.topic)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "unused", "enable.auto.commit": False, "isolation.level": "read_committed"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])  # assigned, not subscribed: no group is joined
        received: Counter[tuple[bytes, bytes]] = Counter()
        deadline = time.monotonic() + 60
        while sum(received.values()) < sum(ends.values()) and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=5):
                assert message.error() is None, message.error()
                received[(message.key(), message.value())] += 1
    finally:
        consumer.close()
    expected = Counter((tx.key, tx.to_bytes()) for tx in transactions(SyntheticConfig(seed=32), 1000))
    assert received == expected
