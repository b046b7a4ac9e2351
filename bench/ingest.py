"""Ingest throughput: the Beam pipeline into the lake on ULB card transactions, against kafka-python and
librdkafka (confluent-kafka) fetching the same topic raw."""

from __future__ import annotations

import time
from typing import Any

import confluent_kafka
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from edgelake.bench.scratch import scratch_settings
from edgelake.contracts import Transaction
from edgelake.errors import UserError
from edgelake.kafka import consumer_config, producer_config
from edgelake.settings import Settings
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources import ulb

ULB_ROWS = 284_807


def run(settings: Settings, events: int, runner_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Produce ``events`` ULB transactions, time raw fetches of them by both clients, then time ``ingest --once``."""
    if events > ULB_ROWS:
        raise UserError(f"the ULB data set has {ULB_ROWS:,} transactions; asked for {events:,}")
    csv = ulb.fetch_csv(settings.cache_path)
    with scratch_settings(settings) as bench_settings:
        servers = bench_settings.kafka_bootstrap_servers
        topic = bench_settings.topic(Transaction.topic)
        _fill(servers, topic, ulb.transactions(csv, settings.dataset_base_time, events))
        kafka_python_s = _kafka_python_consume(servers, topic, events)
        librdkafka_s = _librdkafka_consume(servers, topic, events)
        started = time.perf_counter()
        totals = ingest(bench_settings, IngestOptions(topics=(Transaction.topic,), runner_args=runner_args), once=True)
        ingest_s = time.perf_counter() - started
    landed = totals.counts.get(Transaction.topic, {}).get("silver", 0)
    if landed != events:
        raise RuntimeError(f"benchmark ingested {landed} of {events} events")
    return {
        "events": events,
        "seconds": round(ingest_s, 2),
        "events_per_s": round(events / ingest_s, 1),
        "raw_consume_events_per_s": round(events / kafka_python_s, 1),
        "raw_consume_confluent_events_per_s": round(events / librdkafka_s, 1),
        "ratio": round(librdkafka_s / ingest_s, 3),
        "ratio_to_kafka_python": round(kafka_python_s / ingest_s, 3),
    }


def _fill(servers: str, topic: str, feed: Any) -> None:
    producer = KafkaProducer(**producer_config(servers))
    for tx in feed:
        producer.send(topic, key=tx.key, value=tx.to_bytes())
    producer.flush()
    producer.close()


def _kafka_python_consume(servers: str, topic: str, events: int) -> float:
    """Seconds for kafka-python to fetch every record of the topic, doing nothing with them."""
    consumer = KafkaConsumer(**consumer_config(servers))
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    started = time.perf_counter()
    seen = 0
    while seen < events:
        seen += sum(len(records) for records in consumer.poll(timeout_ms=1000, max_records=50_000).values())
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def _librdkafka_consume(servers: str, topic: str, events: int) -> float:
    """Seconds for librdkafka to fetch every record of the topic (each value taken as Python bytes, as any Python
    reader must), all partitions at once, with kafka-python's fetch sizes."""
    config = consumer_config(servers)
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": servers,
        "group.id": "edgelake-bench",  # required by librdkafka; never joined (assign only)
        "enable.auto.commit": False,
        "isolation.level": config["isolation_level"],
        "max.partition.fetch.bytes": config["max_partition_fetch_bytes"],
        "fetch.max.bytes": config["fetch_max_bytes"],
    })
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in sorted(partitions)])
    started = time.perf_counter()
    seen = 0
    while seen < events:
        seen += len([m.value() for m in consumer.consume(20_000, timeout=1.0) if m.error() is None])
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds
