"""Produce validated events into Kafka without losing any, and account for every one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from edgelake.contracts import EVENT_TYPES, Event
from edgelake.kafka import producer_config
from edgelake.settings import Settings


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
