"""Score events kept in a Redis stream before the answer leaves, relayed to the ``fraud-scores`` topic by any replica.

With ``score_events = "redis"`` a replica killed right after answering loses none of the scores it answered: what it
had not relayed yet, another replica's relay claims once it has been idle ``claim_idle_s``. Each relay reads new
entries under a name of its own in one consumer group, sends them to Kafka and deletes them once the broker has them.
An entry relayed twice (a relay killed between the broker's acknowledgement and the delete) carries the same event id
both times, and ingest keeps it once. Redis must keep the stream: no eviction of keys without a TTL (``volatile-lru``,
not ``allkeys-lru``), and persistence where a Redis restart must not lose what waits.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any

import redis
from kafka.errors import KafkaError
from redis.exceptions import RedisError, ResponseError

from edgelake.api.background import BackgroundThread
from edgelake.api.metrics import ScoreMetrics
from edgelake.broker import configured_servers
from edgelake.contracts import FraudScore
from edgelake.kafka import EventProducer
from edgelake.settings import Settings

log = logging.getLogger(__name__)

_GROUP = "relay"
_FIELD = b"event"


class ScoreEventsUnavailable(Exception):
    """Redis did not take the score events: the scores must not be answered."""


class NotRelayed(Exception):
    """The broker did not acknowledge relayed events; they stay in the stream for the next try."""


class RedisScoreOutbox(BackgroundThread):
    """``publish`` keeps score events in the stream before a score is answered; the relay thread (``start``) sends them on."""

    def __init__(
        self, settings: Settings, metrics: ScoreMetrics, *, claim_idle_s: float = 10.0, batch: int = 500, timeout_s: float = 10.0
    ) -> None:
        self._settings = settings
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
        self._stream = f"edgelake:{settings.topic_prefix}score-outbox"
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._batch = batch
        self._timeout_s = timeout_s
        self._producer: EventProducer | None = None
        metrics.pending.set_function(self.pending)
        super().__init__("score-outbox-relay")

    def publish(self, events: Sequence[FraudScore]) -> None:
        """Keep ``events`` in the stream; ScoreEventsUnavailable if Redis does not take them all."""
        if not events:
            return
        pipeline = self._redis.pipeline(transaction=False)
        for event in events:
            pipeline.xadd(self._stream, {_FIELD: event.to_bytes()})
        try:
            pipeline.execute()
        except RedisError as error:
            raise ScoreEventsUnavailable(f"Redis did not keep the score events: {error}") from None

    def pending(self) -> float:
        """Events in the stream, not yet acknowledged by the topic (NaN while Redis does not answer)."""
        try:
            return float(self._redis.xlen(self._stream))
        except RedisError:
            return float("nan")

    def close(self, timeout_s: float = 5.0) -> None:
        super().close(timeout_s)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(self._timeout_s)
        self._redis.close()

    def _run(self) -> None:
        claimed_at = 0.0
        while not self._stop.is_set():
            try:
                self._ensure_group()
                entries: list[Any] = []
                if time.monotonic() - claimed_at >= self._claim_idle_ms / 2000:  # what a dead relay (or this one, failing) left
                    claimed: Any = self._redis.xautoclaim(self._stream, _GROUP, self._consumer, self._claim_idle_ms, count=self._batch)
                    entries += claimed[1]
                    claimed_at = time.monotonic()
                read: Any = self._redis.xreadgroup(_GROUP, self._consumer, {self._stream: ">"}, count=self._batch, block=1000)
                for _, new in read or []:
                    entries += new
                self._relay([(entry_id, fields) for entry_id, fields in entries if fields])
            except (RedisError, KafkaError, NotRelayed) as error:
                log.warning("score events not relayed this time: %s", error)
                self._stop.wait(1.0)

    def _ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(self._stream, _GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _relay(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        if not entries:
            return
        if self._producer is None:
            self._producer = EventProducer.within(self._settings, configured_servers(self._settings), self._timeout_s)
        producer = self._producer
        refused = producer.send_acknowledged([FraudScore.parse(fields[_FIELD]) for _, fields in entries], self._timeout_s)
        if refused is not None:
            self._producer = None
            producer.close(0)
            raise NotRelayed(refused)
        ids = [entry_id for entry_id, _ in entries]
        pipeline = self._redis.pipeline(transaction=True)
        pipeline.xack(self._stream, _GROUP, *ids)
        pipeline.xdel(self._stream, *ids)
        pipeline.execute()
