"""Python-native Kafka reads over explicit offset ranges: manual assignment, no consumer group."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from edgelake.errors import UserError
from edgelake.kafka import consumer_config, retrying

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


class BrokerUnreachable(UserError, TimeoutError):
    """No progress on a range for longer than the allowed stall."""


def plan_ranges(
    consumer: KafkaConsumer,
    topics: list[str],
    next_offset: Callable[[str, int], int | None],
    max_events: int,
) -> list[OffsetRange]:
    """The ranges to read now: from each partition's next offset (or its beginning) up to
    its end, at most ``max_events`` in all, shared out so every partition advances.

    ``consumer`` (left open) answers the offset look-ups.
    """
    partitions = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        return []
    begin = consumer.beginning_offsets(partitions)
    end = consumer.end_offsets(partitions)
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


@dataclass
class Fetched:
    """Consecutive records of one topic-partition, column by column."""

    offsets: OffsetRange
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # the records' offsets
    timestamps_ms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, messages: list[ConsumerRecord]) -> None:
        self.keys.extend([m.key for m in messages])
        self.values.extend([m.value for m in messages])
        self.positions.extend([m.offset for m in messages])
        self.timestamps_ms.extend([m.timestamp for m in messages])


def read_range(
    bootstrap_servers: str, offsets: OffsetRange, batch_size: int = 20_000, max_stall_s: float = 120.0
) -> Iterator[Fetched]:
    """The records of ``offsets`` in offset order, in pieces of up to ``batch_size``, read by a consumer of their own."""
    reader = RangeReader(bootstrap_servers, batch_size, max_stall_s)
    try:
        yield from reader.read(offsets)
    finally:
        reader.close()


class RangeReader:
    """Reads offset ranges one after another with one consumer, kept from range to range: a new consumer spends about
    0.2 s connecting and learning the cluster's metadata before its first record, once per range otherwise."""

    def __init__(self, bootstrap_servers: str, batch_size: int = 20_000, max_stall_s: float = 120.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.batch_size = batch_size
        self.max_stall_s = max_stall_s
        self._consumer: KafkaConsumer | None = None

    def read(self, offsets: OffsetRange) -> Iterator[Fetched]:
        """The records of ``offsets`` in offset order, in pieces of up to ``batch_size``.

        Waits through broker outages (kafka-python reconnects with backoff) and raises
        ``BrokerUnreachable`` only after ``max_stall_s`` without progress. Records past
        ``end`` that a broker sends anyway are dropped. A read that fails closes the
        consumer: the next range starts with a fresh one.
        """
        if self._consumer is None:
            self._consumer = retrying(lambda: _consumer(self.bootstrap_servers), f"reading {offsets}", self.max_stall_s)
        consumer, tp = self._consumer, TopicPartition(offsets.topic, offsets.partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, offsets.start)
            yield from self._records(consumer, tp, offsets)
        except BaseException:
            self.close()
            raise

    def _records(self, consumer: KafkaConsumer, tp: TopicPartition, offsets: OffsetRange) -> Iterator[Fetched]:
        batch = Fetched(offsets)
        position = offsets.start
        last_progress = time.monotonic()
        while position < offsets.end:
            polled = consumer.poll(timeout_ms=500, max_records=self.batch_size)
            messages = polled.get(tp, [])
            if not messages:
                if _skipped_to(consumer, tp) >= offsets.end:
                    break  # the range ends with offsets that hold no records (transaction markers)
                stalled = time.monotonic() - last_progress
                if stalled > self.max_stall_s:
                    raise BrokerUnreachable(f"no records from {offsets} for {stalled:.0f}s")
                if stalled > 5:
                    log.warning("waiting for the broker", extra={"range": str(offsets), "stalled_s": round(stalled)})
                continue
            last_progress = time.monotonic()
            if messages[-1].offset >= offsets.end:
                messages = [m for m in messages if m.offset < offsets.end]
            batch.extend(messages)
            position = max(position, messages[-1].offset + 1)
            if len(batch) >= self.batch_size:
                yield batch
                batch = Fetched(offsets)
        if batch:
            yield batch

    def close(self) -> None:
        """Close the consumer, if one is open."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def _skipped_to(consumer: KafkaConsumer, tp: TopicPartition) -> int:
    """The consumer's next offset, which moves past control records it never returns; -1 if unknown now."""
    try:
        return consumer.position(tp, timeout_ms=1000) or -1
    except KafkaError:
        return -1


def _consumer(bootstrap_servers: str) -> KafkaConsumer:
    return KafkaConsumer(
        **consumer_config(bootstrap_servers, reconnect_backoff_ms=200, reconnect_backoff_max_ms=5000)
    )
