"""Producer throughput: the validated-event API against raw kafka-python sends of ready bytes."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaProducer

from edgelake.bench.scratch import scratch_settings
from edgelake.contracts import Transaction
from edgelake.kafka import EventProducer, produce, producer_config
from edgelake.settings import Settings
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions

def run(settings: Settings, events: int) -> dict[str, Any]:
    """Best of three runs each, alternating raw, API, API, raw, raw, API so that drift favours neither."""
    with scratch_settings(settings) as bench_settings:
        servers = bench_settings.kafka_bootstrap_servers
        topic = bench_settings.topic(Transaction.topic)
        feed = list(transactions(SyntheticConfig(seed=1), events))
        payloads = [(tx.key, tx.to_bytes()) for tx in feed]
        runs = {"raw": lambda: _raw_send(servers, topic, payloads), "api": lambda: _api_send(bench_settings, servers, feed)}
        seconds: dict[str, list[float]] = {"raw": [], "api": []}
        for name in ("raw", "api", "api", "raw", "raw", "api"):
            seconds[name].append(runs[name]())
        raw_s, api_s = seconds["raw"], seconds["api"]
    return {
        "events": events,
        "seconds": round(min(api_s), 3),
        "events_per_s": round(events / min(api_s), 1),
        "baseline_events_per_s": round(events / min(raw_s), 1),
        "ratio": round(min(raw_s) / min(api_s), 3),
    }


def _raw_send(servers: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    producer = KafkaProducer(**producer_config(servers))
    started = time.perf_counter()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close()
    return seconds


def _api_send(settings: Settings, servers: str, feed: list[Transaction]) -> float:
    producer = EventProducer(settings, servers)
    started = time.perf_counter()
    report = produce(producer, feed)
    seconds = time.perf_counter() - started
    producer.close()
    if report.acknowledged != len(feed):
        raise RuntimeError(f"benchmark lost events: {report}")
    return seconds
