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
from kafka.protocol.metadata import MetadataRequest

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


def wait_until_ready(bootstrap_servers: str, timeout_s: float = 30.0, brokers: int = 1) -> None:
    """Block until the cluster's metadata lists ``brokers`` live brokers; raise ``TimeoutError`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | str | None = None
    while time.monotonic() < deadline:
        if not broker_reachable(bootstrap_servers):
            time.sleep(0.2)  # no client yet: a refused connection makes kafka-python log errors
            continue
        try:
            live = cluster_size(bootstrap_servers)
            if live >= brokers:
                return
            last_error = f"{live} of {brokers} brokers live"
        except (KafkaError, OSError) as error:
            last_error = error
        time.sleep(0.2)
    raise TimeoutError(f"no Kafka cluster answered at {bootstrap_servers} within {timeout_s:.0f}s: {last_error}")


def cluster_size(bootstrap_servers: str) -> int:
    """How many unfenced brokers the cluster's metadata lists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
    try:
        return _live_brokers(admin)
    finally:
        admin.close()


def _live_brokers(admin: KafkaAdminClient) -> int:
    return sum(1 for broker in admin.describe_cluster()["brokers"] if not broker.get("is_fenced"))


def ensure_topics(settings: Settings, bootstrap_servers: str, timeout_s: float = 30.0) -> list[str]:
    """Create every event topic that does not exist yet and wait until each partition has a leader; return the names created.

    Topics are replicated on up to three brokers, with ``min.insync.replicas`` one less than
    their replicas: on a cluster of three or more, an acknowledged write survives the loss
    of any one broker and writes go on while one is down.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        replicas = min(3, _live_brokers(admin))
        configs = {"min.insync.replicas": str(replicas - 1)} if replicas > 1 else {}
        missing = [
            NewTopic(settings.topic(event.topic), event.partitions, replicas, topic_configs=configs)
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
        _wait_for_leaders(admin, [event_topic.name for event_topic in missing], timeout_s)
        return created
    finally:
        admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    """Wait until every broker knows a leader for every partition of ``topics``, so the first produce or read finds it.

    Each broker learns new topics from the metadata log on its own time; a client that
    bootstraps from a broker that has not yet would be told the topic does not exist.
    """
    deadline = time.monotonic() + timeout_s
    while topics:
        topics = sorted(admin._manager.run(_topics_some_broker_lacks, admin, topics))
        if not topics:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {', '.join(topics)} have no leader after {timeout_s:.0f}s")
        time.sleep(0.1)


async def _topics_some_broker_lacks(admin: KafkaAdminClient, topics: list[str]) -> set[str]:
    # kafka-python's admin only asks one broker for metadata; its own describe_log_dirs sends to each node like this.
    request = MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=name) for name in topics], allow_auto_topic_creation=False)
    lacking = set()
    for broker in admin._manager.cluster.brokers():
        response = (await admin._manager.send(request, node_id=broker.node_id)).to_dict()
        lacking |= {t["name"] for t in response["topics"] if t["error_code"] or not t["partitions"] or any(p["leader_id"] < 0 for p in t["partitions"])}
    return lacking


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


def read_topic(bootstrap_servers: str, topic: str, stall_s: float = 30.0) -> Iterator[Record]:
    """Every committed record of ``topic`` up to its end offsets as of this call, one partition after another.

    Raises ``TimeoutError`` when a partition gives nothing for ``stall_s`` before its end.
    """
    consumer = KafkaConsumer(**consumer_config(bootstrap_servers))
    try:
        partitions = _partitions(consumer, topic)
        ends = consumer.end_offsets(partitions)
        for partition in partitions:
            yield from _read_partition(consumer, partition, ends[partition], stall_s)
    finally:
        consumer.close()


def _read_partition(consumer: KafkaConsumer, partition: TopicPartition, end: int, stall_s: float) -> Iterator[Record]:
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    progress = time.monotonic()
    while consumer.position(partition) < end:
        batch = consumer.poll(timeout_ms=200, max_records=50_000)
        for messages in batch.values():
            progress = time.monotonic()
            for m in messages:
                if m.offset < end:
                    yield Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
        if time.monotonic() - progress > stall_s:
            raise TimeoutError(f"{partition} gave nothing for {stall_s:.0f}s before its end offset {end}")


def _partitions(consumer: KafkaConsumer, topic: str) -> Sequence[TopicPartition]:
    ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise LookupError(f"topic '{topic}' does not exist")
    return [TopicPartition(topic, p) for p in sorted(ids)]
