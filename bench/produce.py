"""Producer throughput: the validated-event API against raw kafka-python sends of ready bytes."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer

from edgelake.broker import EmbeddedBroker, bootstrap_servers, free_port
from edgelake.contracts import Transaction
from edgelake.kafka import ensure_topics, producer_config
from edgelake.settings import Settings
from ingest.producer import EventProducer, produce
from ingest.sources.synthetic import SyntheticConfig, transactions

def run(settings: Settings, events: int) -> dict[str, Any]:
    """Best of two runs each, in the order raw, API, API, raw so that drift favours neither.

    With the embedded broker the benchmark starts a private one, so the state of the
    user's broker (its stored data, its background work) does not enter the figures.
    """
    with _bench_broker(settings) as servers:
        bench_settings = settings.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}-"})
        created = ensure_topics(bench_settings, servers)
        topic = bench_settings.topic(Transaction.topic)
        feed = list(transactions(SyntheticConfig(seed=1), events))
        payloads = [(tx.key, tx.to_bytes()) for tx in feed]
        try:
            raw_s = [_raw_send(servers, topic, payloads)]
            api_s = [_api_send(bench_settings, servers, feed) for _ in range(2)]
            raw_s.append(_raw_send(servers, topic, payloads))
        finally:
            _delete_topics(servers, created)
    return {
        "events": events,
        "seconds": round(min(api_s), 3),
        "events_per_s": round(events / min(api_s), 1),
        "baseline_events_per_s": round(events / min(raw_s), 1),
        "ratio": round(min(raw_s) / min(api_s), 3),
    }


@contextmanager
def _bench_broker(settings: Settings) -> Iterator[str]:
    if not settings.embedded_broker:
        yield bootstrap_servers(settings)
        return
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-") as data_dir:
        broker = EmbeddedBroker(settings.broker_impl, free_port(), Path(data_dir))
        broker.start()
        try:
            yield broker.bootstrap_servers
        finally:
            broker.stop()


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


def _delete_topics(servers: str, topics: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.delete_topics(topics)
    except Exception:  # noqa: BLE001 - cleanup is best effort; some brokers cannot delete topics
        pass
    finally:
        admin.close()
