"""Ingest throughput: the Beam pipeline into the lake against kafka-python fetching the same topic raw."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.scratch import scratch_settings
from edgelake.contracts import Transaction
from edgelake.kafka import consumer_config, producer_config
from edgelake.settings import Settings
from ingest.loop import IngestOptions, ingest
from ingest.sources.synthetic import SyntheticConfig, transactions


def run(settings: Settings, events: int, runner_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Produce ``events`` transactions, time a raw fetch of them, then time ``ingest --once``."""
    with scratch_settings(settings) as bench_settings:
        servers = bench_settings.kafka_bootstrap_servers
        topic = bench_settings.topic(Transaction.topic)
        _fill(servers, topic, events)
        raw_s = _raw_consume(servers, topic, events)
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
        "raw_consume_events_per_s": round(events / raw_s, 1),
        "ratio": round(raw_s / ingest_s, 3),
    }


def _fill(servers: str, topic: str, events: int) -> None:
    producer = KafkaProducer(**producer_config(servers))
    for tx in transactions(SyntheticConfig(seed=3), events):
        producer.send(topic, key=tx.key, value=tx.to_bytes())
    producer.flush()
    producer.close()


def _raw_consume(servers: str, topic: str, events: int) -> float:
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
