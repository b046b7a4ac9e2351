"""The card feed: a background thread that adds every transaction on the transactions topic to the scorer's card histories.

Cards' features then also reflect transactions that reach Kafka without being scored
through this server (another replica, a batch producer). A transaction both scored here
and read from the topic counts once: card histories skip event ids they already hold.

The feed reads every partition of the topic with manual assignment (no consumer group,
no committed offsets). With ``start="end"`` (the default) it begins at each partition's
end as of its first connection, so only transactions produced after the server started
are fed: earlier ones are the batch features' business. ``start="beginning"`` replays
what the topic still holds. After a lost connection it resumes where it stopped;
partitions that appear after the first connection are read from their beginning.
Partitions added while connected are picked up at the next reconnection.

An absent broker never blocks or fails scoring: the feed tries again with backoff, at most
``retry_s`` seconds apart, checking first that a bootstrap address accepts connections, so
kafka-python logs nothing while none does; a failure that repeats the one before is logged
at debug level. Records fed and refused (not a valid ``Transaction``, or an
amount beyond what the scorer accepts) and the lag behind the topic are Prometheus metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Literal

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from edgelake.api.background import BackgroundThread
from edgelake.api.metrics import CardFeedMetrics
from edgelake.api.scoring import Scorer, unscorable
from edgelake.broker import configured_servers
from edgelake.contracts import InvalidEvent, Transaction
from edgelake.kafka import broker_reachable, consumer_config
from edgelake.retry import retrying
from edgelake.settings import Settings

log = logging.getLogger(__name__)

Start = Literal["end", "beginning"]


class CardFeed(BackgroundThread):
    """Feeds the transactions topic of ``settings`` into ``scorer``'s card histories from a daemon thread: ``start()``, ``close()``."""

    def __init__(
        self, settings: Settings, scorer: Scorer, metrics: CardFeedMetrics, *, start: Start = "end", retry_s: float = 5.0,
        poll_ms: int = 500, max_records: int = 5_000,
    ) -> None:
        self._servers = configured_servers(settings)
        self._topic = settings.topic(Transaction.topic)
        self._scorer = scorer
        self._metrics = metrics
        self._start = start
        self._retry_s = retry_s
        self._poll_ms = poll_ms
        self._max_records = max_records
        self._positions: dict[TopicPartition, int] = {}  # the next offset to feed, per partition seen
        super().__init__("card-feed")

    def _run(self) -> None:
        what = f"card feed reading {self._topic} at {self._servers}"
        with suppress(Exception):  # any client failure is retried: what comes out is the last one, once closed
            retrying(self._read, what, retry_on=Exception, logger=log, max_s=self._retry_s, stop=self._stop, quiet_repeats=True)

    def _read(self) -> None:
        """Connect and feed until closed; raises what fails, first of all that no broker accepts connections."""
        if not broker_reachable(self._servers):
            raise ConnectionError("no broker accepts connections")
        consumer = KafkaConsumer(**consumer_config(self._servers, reconnect_backoff_ms=200, reconnect_backoff_max_ms=5000))
        try:
            self._consume(consumer)
        finally:
            self._metrics.partitions.set(0)
            _close(consumer)

    def _consume(self, consumer: KafkaConsumer) -> None:
        """Assign every partition, then feed what each poll returns until stopped."""
        partitions = self._assign(consumer)
        self._metrics.partitions.set(len(partitions))
        log.info("card feed reading %s at %s (%d partitions)", self._topic, self._servers, len(partitions))
        while not self._stop.is_set():
            polled = consumer.poll(timeout_ms=self._poll_ms, max_records=self._max_records)
            for messages in polled.values():
                self._feed(messages)
            lag = 0
            for tp in partitions:
                position = consumer.position(tp, timeout_ms=1000)
                if position is not None:
                    self._positions[tp] = position
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag += max(highwater - self._positions[tp], 0)
            self._metrics.lag.set(lag)

    def _assign(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        """Assign the topic's partitions and seek each: where the feed stopped, else per ``start`` (first connection) or beginning."""
        ids = consumer.partitions_for_topic(self._topic)
        if not ids:
            raise LookupError(f"topic '{self._topic}' does not exist")
        partitions = [TopicPartition(self._topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        new = [tp for tp in partitions if tp not in self._positions]
        if new:
            at_end = self._start == "end" and not self._positions
            self._positions.update(consumer.end_offsets(new) if at_end else consumer.beginning_offsets(new))
        for tp in partitions:
            consumer.seek(tp, self._positions[tp])
        return partitions

    def _feed(self, messages: Sequence[ConsumerRecord]) -> None:
        valid = []
        now = datetime.now(UTC)
        for message in messages:
            try:
                event = Transaction.parse(message.value)
            except InvalidEvent:
                continue
            if isinstance(event, Transaction) and not unscorable(event, now):
                valid.append(event)
        self._scorer.record(valid)
        self._metrics.records.labels("fed").inc(len(valid))
        self._metrics.records.labels("invalid").inc(len(messages) - len(valid))


def _close(consumer: KafkaConsumer) -> None:
    try:
        consumer.close()
    except Exception:  # closing a broken client may fail too; it is discarded either way
        pass
