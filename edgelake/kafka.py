"""Kafka client configuration and topic administration shared by every stage."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from edgelake.contracts import EVENT_TYPES
from edgelake.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def producer_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """KafkaProducer options that lose nothing: all replicas acknowledge, retries, idempotence."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        **overrides,
    }


def consumer_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """KafkaConsumer options for manual partition assignment; no consumer group is used."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed",  # never ingest records of aborted transactions
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
        # Some Kafka-compatible brokers (noida-db) ignore the fetch limits above and answer
        # with everything up to the partition's end; accept such responses rather than fail.
        "receive_message_max_bytes": 1024 * 1024 * 1024,
        **overrides,
    }


def retrying(call: Callable[[], T], what: str, max_stall_s: float = 120.0) -> T:
    """``call()``, tried again with backoff while the broker cannot be reached, for up to ``max_stall_s``."""
    started = time.monotonic()
    delay = 0.2
    while True:
        try:
            return call()
        except KafkaError as error:
            stalled = time.monotonic() - started
            if stalled > max_stall_s:
                raise TimeoutError(f"{what}: no broker answered for {stalled:.0f}s ({error})") from error
            log.warning("waiting for the broker", extra={"doing": what, "stalled_s": round(stalled), "error": str(error)})
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def wait_until_ready(bootstrap_servers: str, timeout_s: float = 30.0) -> None:
    """Block until a broker answers a metadata request; raise ``TimeoutError`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not broker_reachable(bootstrap_servers):
            time.sleep(0.2)  # no client yet: a refused connection makes kafka-python log errors
            continue
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as error:
            last_error = error
            time.sleep(0.2)
    raise TimeoutError(f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f}s: {last_error}")


def ensure_topics(settings: Settings, bootstrap_servers: str) -> list[str]:
    """Create every event topic that does not exist yet; return the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(settings.topic(event.topic), event.partitions, 1)
            for event in EVENT_TYPES
            if settings.topic(event.topic) not in existing
        ]
        created = []
        for topic in missing:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def broker_reachable(bootstrap_servers: str) -> bool:
    """Whether any bootstrap address accepts a TCP connection: a check before a client exists, which would log each refusal."""
    return any(_accepts(address) for address in bootstrap_servers.split(","))


def end_offsets(bootstrap_servers: str, topics: Sequence[str], timeout_ms: int = 2000) -> dict[tuple[str, int], int]:
    """Each partition's end offset of the ``topics`` that exist; a brief client with short timeouts."""
    consumer = KafkaConsumer(
        **consumer_config(bootstrap_servers, request_timeout_ms=timeout_ms)
    )
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {(tp.topic, tp.partition): offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def _accepts(address: str) -> bool:
    host, _, port = address.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class Record:
    """One message read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


def read_topic(bootstrap_servers: str, topic: str, idle_s: float = 2.0) -> Iterator[Record]:
    """Every record of ``topic`` from the beginning, one partition after another."""
    consumer = KafkaConsumer(**consumer_config(bootstrap_servers))
    try:
        for partition in _partitions(consumer, topic):
            yield from _read_partition(consumer, partition, idle_s)
    finally:
        consumer.close()


def _read_partition(consumer: KafkaConsumer, partition: TopicPartition, idle_s: float) -> Iterator[Record]:
    """A partition from its start until its end offset is reached and ``idle_s`` passed without records.

    Some Kafka-compatible brokers misreport end offsets, so they alone are not trusted
    to mean "done" (nor, after ``10 * idle_s`` of silence, "not done").
    """
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    end = consumer.end_offsets([partition])[partition]
    idle_since = time.monotonic()
    while True:
        batch = consumer.poll(timeout_ms=200, max_records=50_000)
        for messages in batch.values():
            idle_since = time.monotonic()
            for m in messages:
                yield Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
        idle = time.monotonic() - idle_since
        if (consumer.position(partition) >= end and idle >= idle_s) or idle >= 10 * idle_s:
            return


def _partitions(consumer: KafkaConsumer, topic: str) -> Sequence[TopicPartition]:
    ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise LookupError(f"topic '{topic}' does not exist")
    return [TopicPartition(topic, p) for p in sorted(ids)]
