"""Kafka client configuration, topic administration and the event producer shared by every stage."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.protocol.metadata import MetadataRequest

from edgelake import retry
from edgelake.contracts import EVENT_TYPES, Event
from edgelake.errors import UserError
from edgelake.settings import Settings

log = logging.getLogger(__name__)


class KafkaUnreachable(UserError, TimeoutError):
    """No Kafka broker answered, or answered what was asked, in time."""


class UnknownTopic(UserError, LookupError):
    """A topic the cluster does not have."""
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
        # Back at most 5 s after a broker returns (the client's default backs off up to 30 s), as the consumers do.
        "reconnect_backoff_ms": 200,
        "reconnect_backoff_max_ms": 5000,
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
    """``call()``, tried again with backoff while the broker cannot be reached; ``KafkaUnreachable`` after ``max_stall_s``."""
    started = time.monotonic()
    try:
        return retry.retrying(call, what, retry_on=KafkaError, logger=log, first_s=0.2, max_s=5.0, max_stall_s=max_stall_s)
    except KafkaError as error:
        raise KafkaUnreachable(f"{what}: no broker answered for {time.monotonic() - started:.0f}s ({error})") from error


def wait_until_ready(bootstrap_servers: str, timeout_s: float = 30.0, brokers: int = 1) -> None:
    """Block until the cluster's metadata lists ``brokers`` live brokers; raise ``KafkaUnreachable`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | str = "nothing listens there"
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
    raise KafkaUnreachable(f"no Kafka cluster answered at {bootstrap_servers} within {timeout_s:.0f}s: {last_error}")


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
            raise KafkaUnreachable(f"topics {', '.join(topics)} have no leader after {timeout_s:.0f}s")
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

    Raises ``KafkaUnreachable`` when a partition gives nothing for ``stall_s`` before its end.
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
            raise KafkaUnreachable(f"{partition} gave nothing for {stall_s:.0f}s before its end offset {end}")


def _partitions(consumer: KafkaConsumer, topic: str) -> Sequence[TopicPartition]:
    ids = consumer.partitions_for_topic(topic)
    if not ids:
        raise UnknownTopic(f"topic '{topic}' does not exist")
    return [TopicPartition(topic, p) for p in sorted(ids)]


@dataclass
class DeliveryReport:
    """What happened to the events given to a producer."""

    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    per_topic: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return self.sent - self.acknowledged - self.failed


class EventProducer:
    """Sends contract-valid events to their topics, keyed by their key field.

    Every event is validated before anything is sent: ``send_many`` refuses the
    whole batch if one event is invalid, so nothing is half-sent.
    """

    def __init__(
        self, settings: Settings, bootstrap_servers: str, on_failure: Callable[[str, KafkaError], None] | None = None, **kafka_overrides: Any
    ) -> None:
        """``on_failure(event_id, error)`` runs for each event the producer gives up on, on its I/O thread."""
        self._producer = KafkaProducer(**producer_config(bootstrap_servers, **kafka_overrides))
        self._on_failure = on_failure
        self._topics = {event: settings.topic(event.topic) for event in EVENT_TYPES}
        self._lock = threading.Lock()
        self.report = DeliveryReport()

    @classmethod
    def within(cls, settings: Settings, bootstrap_servers: str, timeout_s: float) -> EventProducer:
        """A producer that gives up on a broker after ``timeout_s`` (metadata, each request) and on an event after twice that."""
        timeout_ms = int(timeout_s * 1000)
        return cls(settings, bootstrap_servers, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms, delivery_timeout_ms=2 * timeout_ms)

    def send_acknowledged(self, events: Iterable[Event], timeout_s: float) -> str | None:
        """Send ``events`` and wait up to ``timeout_s`` for the broker: None once it acknowledged every one, else why not."""
        failed = self.report.failed
        self.send_many(events)
        report = self.flush(timeout_s)
        if report.failed == failed and not report.pending:
            return None
        return report.errors[-1] if report.errors else f"the broker did not acknowledge them within {timeout_s:g} s"

    def send(self, event: Event | Mapping[str, Any], event_type: type[Event] | None = None) -> None:
        """Validate one event (an instance, or a mapping with ``event_type``) and send it."""
        self._send(_validated(event, event_type))

    def send_many(self, events: Iterable[Event | Mapping[str, Any]], event_type: type[Event] | None = None) -> int:
        """Validate every event, then send them all; return how many were sent."""
        valid = [_validated(event, event_type) for event in events]
        for event in valid:
            self._send(event)
        return len(valid)

    def flush(self, timeout_s: float | None = None) -> DeliveryReport:
        """Wait for every sent event to be acknowledged or to fail (``KafkaTimeoutError`` after ``timeout_s``)."""
        self._producer.flush(timeout=timeout_s)
        return self.report

    def close(self, timeout_s: float | None = None) -> DeliveryReport:
        self.flush(timeout_s)
        self._producer.close(timeout=timeout_s)
        return self.report

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, event: Event) -> None:
        topic = self._topics[type(event)]
        future = self._producer.send(topic, key=event.key, value=event.to_bytes())
        self.report.sent += 1
        self.report.per_topic[topic] = self.report.per_topic.get(topic, 0) + 1
        future.add_callback(self._acknowledged)
        future.add_errback(self._failed, event.event_id)

    def _acknowledged(self, _: object) -> None:
        with self._lock:
            self.report.acknowledged += 1

    def _failed(self, event_id: str, error: KafkaError) -> None:
        with self._lock:
            self.report.failed += 1
            if len(self.report.errors) < 100:
                self.report.errors.append(f"{event_id}: {error}")
        if self._on_failure is not None:
            self._on_failure(event_id, error)


def produce(
    producer: EventProducer,
    events: Iterable[Event],
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
) -> DeliveryReport:
    """Send ``events`` at up to ``rate`` events/s (0 = as fast as possible), then flush."""
    started = time.monotonic()
    count = 0
    for count, event in enumerate(events, start=1):
        producer.send(event)
        if rate > 0:
            ahead = count / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if on_progress is not None and count % 1000 == 0:
            on_progress(1000)
    report = producer.flush()
    if on_progress is not None:
        on_progress(count % 1000)
    return report


def _validated(event: Event | Mapping[str, Any], event_type: type[Event] | None) -> Event:
    if isinstance(event, Event):
        return event
    if event_type is None:
        raise TypeError("a mapping needs event_type to be validated")
    return event_type.parse(event)
