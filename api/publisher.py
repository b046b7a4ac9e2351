"""Score events to the ``fraud-scores`` topic, sent from a background thread so a slow or absent broker never delays a score.

The ``EventProducer`` is created on the first event, and again after a failure (at most
every ``retry_s`` seconds). Events that cannot be sent — the broker unreachable, the
queue full, a delivery failed — are dropped and counted in ``ScoreMetrics.unpublished``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from api.metrics import ScoreMetrics
from edgelake.broker import configured_servers
from edgelake.contracts import FraudScore
from edgelake.settings import Settings
from ingest.producer import EventProducer

log = logging.getLogger(__name__)


class ScorePublisher:
    """Queues score events and sends them to the broker the settings name (the embedded one's port by default)."""

    def __init__(
        self, settings: Settings, metrics: ScoreMetrics, *, queue_size: int = 100_000, retry_s: float = 30.0,
        connect_timeout_s: float = 5.0, flush_timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self._settings = settings
        self._metrics = metrics
        self._queue: queue.Queue[Sequence[FraudScore]] = queue.Queue(queue_size)
        self._retry_s = retry_s
        self._flush_timeout_s = flush_timeout_s
        self._connect_ms = int(connect_timeout_s * 1000)
        self._producer: EventProducer | None = None
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def bootstrap_servers(self) -> str:
        return configured_servers(self._settings)

    def publish(self, events: Sequence[FraudScore]) -> None:
        """Queue ``events`` for sending; never blocks, never raises."""
        if not events:
            return
        self._start()
        try:
            self._queue.put_nowait(events)
        except queue.Full:
            self._metrics.unpublished.inc(len(events))

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fraud-score-publisher", daemon=True)
                self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then close the producer."""
        if self._thread is not None:
            self._queue.put(())  # the stop mark, behind every queued batch
            self._thread.join(timeout_s)
        if self._producer is not None:
            self._drop(self._producer)

    def _run(self) -> None:
        while events := self._queue.get():
            self._send(events)

    def _send(self, events: Sequence[FraudScore]) -> None:
        producer = self._connected()
        if producer is None:
            self._metrics.unpublished.inc(len(events))
            return
        failed_before = producer.report.failed
        try:
            producer.send_many(events)
            report = producer.flush(self._flush_timeout_s)
        except Exception as error:  # any client failure: drop this producer and count the batch, never kill the thread
            log.warning("score events not sent to %s: %s", self.bootstrap_servers, error)
            self._metrics.unpublished.inc(len(events))
            self._drop(producer)
            return
        self._metrics.unpublished.inc(report.failed - failed_before)

    def _connected(self) -> EventProducer | None:
        if self._producer is None and time.monotonic() >= self._retry_at:
            try:
                self._producer = EventProducer(
                    self._settings, self.bootstrap_servers, bootstrap_timeout_ms=self._connect_ms, max_block_ms=self._connect_ms
                )
            except Exception as error:  # the client raises several kinds when no broker answers
                log.warning("no broker for score events at %s (%s); retrying in %.0fs", self.bootstrap_servers, error, self._retry_s)
                self._retry_at = time.monotonic() + self._retry_s
        return self._producer

    def _drop(self, producer: EventProducer) -> None:
        self._producer = None
        self._retry_at = time.monotonic() + self._retry_s
        try:
            producer.close(0)
        except Exception:  # closing a broken client may fail too; it is discarded either way
            pass
