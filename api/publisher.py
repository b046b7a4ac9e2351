"""Score events to the ``fraud-scores`` topic, sent from a background thread so a slow or absent broker never delays a score.

Events wait in a bounded queue, then in the producer, until Kafka acknowledges them: a
broker outage or a leader election delays them, and the idempotent producer's retries
write each once. Events are lost only when the queue is full, when the producer gives up
on them (its delivery timeout) or when they are still unsent at shutdown; those are
counted in ``ScoreMetrics.unpublished``. Events queued or in flight are ``ScoreMetrics.pending``.
This is the default (``score_events = "memory"``); :mod:`edgelake.api.score_outbox` keeps them in Redis instead, so a
killed replica loses none.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Protocol

from kafka.errors import KafkaError

from edgelake.api.metrics import ScoreMetrics
from edgelake.broker import configured_servers
from edgelake.contracts import FraudScore
from edgelake.settings import Settings
from edgelake.kafka import EventProducer
from edgelake.retry import retrying

log = logging.getLogger(__name__)

_STOP: Sequence[FraudScore] = ()


class ScoreEvents(Protocol):
    """Where answered score events go on their way to the fraud-scores topic."""

    def start(self) -> None: ...

    def publish(self, events: Sequence[FraudScore]) -> None: ...

    def close(self) -> None: ...


class ScorePublisher:
    """Queues score events and sends them to the broker the settings name (the embedded one's port by default)."""

    def __init__(
        self, settings: Settings, metrics: ScoreMetrics, *, queue_size: int = 100_000, retry_s: float = 5.0, connect_timeout_s: float = 5.0,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._queue: queue.Queue[Sequence[FraudScore]] = queue.Queue(queue_size)
        self._queued = 0  # events in the queue (its items are batches)
        self._retry_s = retry_s
        self._close_timeout_s = close_timeout_s
        self._connect_ms = int(connect_timeout_s * 1000)
        self._producer: EventProducer | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        metrics.pending.set_function(self.pending)

    @property
    def bootstrap_servers(self) -> str:
        return configured_servers(self._settings)

    def pending(self) -> int:
        """Events queued or sent but not yet acknowledged."""
        producer = self._producer
        return self._queued + (producer.report.pending if producer is not None else 0)

    def start(self) -> None:
        """Nothing to start: the sending thread starts with the first events."""

    def publish(self, events: Sequence[FraudScore]) -> None:
        """Queue ``events`` for sending; never blocks, never raises."""
        if not events:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fraud-score-publisher", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait(events)
                self._queued += len(events)
            except queue.Full:
                self._metrics.unpublished.inc(len(events))

    def close(self) -> None:
        """Send what is queued (waiting at most ``close_timeout_s``), close the producer, count what was left unsent."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)  # behind every queued batch
        if self._producer is None:
            self._closing.set()  # never connected: don't wait for a broker at shutdown
        thread.join(self._close_timeout_s)
        self._closing.set()  # a thread still waiting for a broker gives up now
        thread.join(self._retry_s + 1)
        producer = self._producer
        if producer is not None:
            try:
                producer.close(self._close_timeout_s)
            except KafkaError as error:
                log.warning("score events still unsent at shutdown: %s", error)
        self._metrics.unpublished.inc(self.pending())

    def _run(self) -> None:
        while (events := self._queue.get()) is not _STOP:
            try:
                self._send(events)
            except KafkaError:  # closing with no broker: close() counts what is still queued
                return

    def _send(self, events: Sequence[FraudScore]) -> None:
        """Send ``events``, connecting first on first use, backing off up to ``retry_s`` while no broker takes them.

        Raises the last ``KafkaError`` once closing. A broker error is the producer's finding no metadata within
        max_block_ms, or its buffer staying full; the events not sent yet are sent again.
        """
        sent = 0

        def send_rest() -> None:
            nonlocal sent
            producer = self._producer or self._connect()
            for event in events[sent:]:
                producer.send(event)
                sent += 1
                with self._lock:
                    self._queued -= 1

        what = f"sending score events to {self.bootstrap_servers}"
        retrying(send_rest, what, retry_on=KafkaError, logger=log, max_s=self._retry_s, stop=self._closing)

    def _connect(self) -> EventProducer:
        """A producer to the configured broker, kept for the events that follow."""
        self._producer = EventProducer(
            self._settings, self.bootstrap_servers, on_failure=lambda *_: self._metrics.unpublished.inc(),
            bootstrap_timeout_ms=self._connect_ms, max_block_ms=self._connect_ms,
        )
        return self._producer

