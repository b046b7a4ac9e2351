"""Where a device's results go, and their way there: from the outbox, oldest first, straight to Kafka when the device can
reach a broker, else through the API."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from edgelake.edge.client import CloudClient, CloudRefused, CloudUnreachable
from edgelake.edge.outbox import Outbox
from edgelake.kafka import producer_config

logger = logging.getLogger(__name__)


class ResultSink(Protocol):
    """Delivers results (EdgeInference JSON, in order) or raises CloudUnreachable; delivered means acknowledged."""

    def deliver(self, events: Sequence[bytes]) -> None: ...
    def close(self) -> None: ...


class ApiSink:
    """Posts results to ``/v1/devices/{id}/results``; the API forwards them to Kafka once per event id."""

    def __init__(self, client: CloudClient, device_id: str) -> None:
        self.client = client
        self.device_id = device_id

    def deliver(self, events: Sequence[bytes]) -> None:
        self.client.send_results(self.device_id, events)

    def close(self) -> None:
        """Nothing to close: the client belongs to the agent."""


class KafkaSink:
    """Publishes results to the ``edge-inferences`` topic, acknowledged by every in-sync replica, keyed by device."""

    def __init__(self, bootstrap_servers: str, topic: str, device_id: str, timeout_s: float = 10.0) -> None:
        timeout_ms = int(timeout_s * 1000)
        self.topic = topic
        self.key = device_id.encode()
        self.timeout_s = timeout_s
        self._config = producer_config(
            bootstrap_servers, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms, delivery_timeout_ms=2 * timeout_ms
        )
        self._producer: KafkaProducer | None = None

    def deliver(self, events: Sequence[bytes]) -> None:
        try:
            producer = self._producer or self._open()
            futures = [producer.send(self.topic, key=self.key, value=event) for event in events]
            producer.flush(self.timeout_s)
            for future in futures:
                future.get(timeout=0)
        except KafkaError as error:
            self.close()
            raise CloudUnreachable(f"Kafka: {type(error).__name__}: {error}") from None

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except KafkaError:
                pass  # undelivered results stay queued and are sent again

    def _open(self) -> KafkaProducer:
        self._producer = KafkaProducer(**self._config)
        return self._producer


class FallbackSink:
    """The first sink that delivers; the next one when it cannot."""

    def __init__(self, sinks: Sequence[ResultSink]) -> None:
        self.sinks = list(sinks)

    def deliver(self, events: Sequence[bytes]) -> None:
        failures = []
        for sink in self.sinks:
            try:
                return sink.deliver(events)
            except CloudUnreachable as error:
                failures.append(f"{type(sink).__name__}: {error}")
        raise CloudUnreachable("; ".join(failures))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()



def result_sink(client: CloudClient, device_id: str, kafka_bootstrap_servers: str, topic: str) -> ResultSink:
    """The API alone, or Kafka first when the device is given brokers (``kafka_bootstrap_servers``)."""
    api = ApiSink(client, device_id)
    if not kafka_bootstrap_servers:
        return api
    return FallbackSink([KafkaSink(kafka_bootstrap_servers, topic, device_id), api])


class Forwarder:
    """Delivers the outbox's results to a sink, oldest first, ``batch`` at a time, and counts those delivered.

    ``queued`` is set when a result is queued: what the cloud loop waits for when the outbox is empty.
    """

    def __init__(self, outbox: Outbox, sink: ResultSink, batch: int) -> None:
        self.outbox = outbox
        self.sink = sink
        self.batch = batch
        self.queued = threading.Event()
        self.delivered = 0

    def forward(self) -> int | None:
        """Deliver the oldest queued batch; how many results were delivered, None when the cloud could not take them."""
        batch = self.outbox.peek(self.batch)
        if not batch:
            return 0
        try:
            self.sink.deliver([queued.payload for queued in batch])
        except (CloudUnreachable, CloudRefused) as error:
            logger.debug("results kept queued (%d): %s", len(batch), error)
            return None
        self.outbox.acknowledge(batch[-1].seq)
        self.delivered += len(batch)
        return len(batch)

    def drain(self, stop: threading.Event, timeout_s: float) -> None:
        """Wait, up to ``timeout_s`` or until ``stop`` is set, until the cloud loop delivered every queued result."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) and time.monotonic() < deadline and not stop.is_set():
            self.queued.set()
            stop.wait(0.2)
