"""Python-native Kafka reads over explicit offset ranges: manual assignment, no consumer group."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

from edgelake.kafka import Record, consumer_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one topic-partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class BrokerUnreachable(TimeoutError):
    """No progress on a range for longer than the allowed stall."""


def plan_ranges(
    bootstrap_servers: str,
    topics: list[str],
    next_offset: Callable[[str, int], int | None],
    max_events: int,
) -> list[OffsetRange]:
    """The ranges to read now: from each partition's next offset (or its beginning) up to
    its end, at most ``max_events`` in all, shared out so every partition advances."""
    consumer = _consumer(bootstrap_servers)
    try:
        partitions = [
            TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        begin = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
    finally:
        consumer.close()
    pending = []
    for tp in partitions:
        start = max(begin[tp], next_offset(tp.topic, tp.partition) or 0)
        if end[tp] > start:
            pending.append(OffsetRange(tp.topic, tp.partition, start, end[tp]))
    return _share(pending, max_events)


def _share(pending: list[OffsetRange], budget: int) -> list[OffsetRange]:
    """Cut ranges so they hold at most ``budget`` offsets, giving each partition a fair share."""
    ranges = []
    remaining = sorted(pending, key=lambda r: r.size)
    while remaining:
        share = max(1, budget // len(remaining))
        r = remaining.pop(0)
        take = min(r.size, share, budget)
        if take <= 0:
            break
        ranges.append(OffsetRange(r.topic, r.partition, r.start, r.start + take))
        budget -= take
    return sorted(ranges, key=lambda r: (r.topic, r.partition))


def read_range(
    bootstrap_servers: str, offsets: OffsetRange, batch_size: int = 5000, max_stall_s: float = 120.0
) -> Iterator[list[Record]]:
    """The records of ``offsets`` in offset order, in lists of up to ``batch_size``.

    Waits through broker outages (kafka-python reconnects with backoff) and raises
    ``BrokerUnreachable`` only after ``max_stall_s`` without progress. Records past
    ``end`` that a broker sends anyway are dropped.
    """
    tp = TopicPartition(offsets.topic, offsets.partition)
    consumer = _consumer(bootstrap_servers)
    try:
        consumer.assign([tp])
        consumer.seek(tp, offsets.start)
        batch: list[Record] = []
        position = offsets.start
        last_progress = time.monotonic()
        while position < offsets.end:
            polled = consumer.poll(timeout_ms=500, max_records=batch_size)
            messages = polled.get(tp, [])
            if not messages:
                stalled = time.monotonic() - last_progress
                if stalled > max_stall_s:
                    raise BrokerUnreachable(f"no records from {offsets} for {stalled:.0f}s")
                if stalled > 5:
                    log.warning("waiting for the broker", extra={"range": str(offsets), "stalled_s": round(stalled)})
                continue
            last_progress = time.monotonic()
            for m in messages:
                if m.offset >= offsets.end:
                    break
                batch.append(Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp))
            position = max(position, messages[-1].offset + 1)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        consumer.close()


def _consumer(bootstrap_servers: str) -> KafkaConsumer:
    return KafkaConsumer(
        **consumer_config(bootstrap_servers, reconnect_backoff_ms=200, reconnect_backoff_max_ms=5000)
    )
