"""The ingester: plans micro-batches from the Delta log's offsets and runs one pipeline per batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kafka import KafkaConsumer, TopicPartition
from deltalake.exceptions import CommitFailedError
from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from edgelake import retry
from edgelake.broker import bootstrap_servers
from edgelake.contracts import EVENT_BY_TOPIC
from edgelake.kafka import consumer_config, retrying
from edgelake.settings import Settings
from edgelake.ingest.kafka_source import OffsetRange, plan_ranges
from edgelake.ingest.lake_writer import ConcurrentCommit
from edgelake.ingest.pipeline import OUTCOMES, Batch, BatchCounts, WriterConfig, pipeline_options, run_batch
from edgelake.lake.catalog import Lake, UnknownTable, optimize
from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER

log = logging.getLogger(__name__)
T = TypeVar("T")

EVENTS = Counter("edgelake_ingest_events_total", "Events ingested, by topic and outcome", ["topic", "outcome"])
LAG = Gauge("edgelake_ingest_lag_events", "Offsets not yet in the lake, per partition", ["topic", "partition"])
BATCH_SECONDS = Histogram(
    "edgelake_ingest_batch_seconds", "Micro-batch latency", buckets=(0.5, 1, 2, 5, 10, 20, 60, 120)
)


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest: which topics, the micro-batch trigger, table maintenance and the Beam runner."""

    pipeline: str = "edgelake-ingest"
    topics: tuple[str, ...] = tuple(EVENT_BY_TOPIC)
    max_events: int = 250_000
    max_bytes: int = 256 * 1024 * 1024
    max_wait_s: float = 2.0
    compact_every: int = 25  # batches between compactions; 0 = never
    runner_args: tuple[str, ...] = ()


@dataclass
class IngestTotals:
    batches: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, batch: BatchCounts) -> None:
        self.batches += 1
        for topic, outcomes in batch.items():
            mine = self.counts.setdefault(topic, {})
            for outcome, n in outcomes.items():
                mine[outcome] = mine.get(outcome, 0) + n


def ingest(
    settings: Settings,
    options: IngestOptions,
    once: bool = False,
    stop: threading.Event | None = None,
) -> IngestTotals:
    """Ingest until ``stop`` is set, or with ``once`` up to the end offsets seen at start."""
    offsets = OffsetsClient(bootstrap_servers(settings))
    try:
        return _ingest_batches(settings, options, once, stop or threading.Event(), offsets)
    finally:
        offsets.close()


def _ingest_batches(settings: Settings, options: IngestOptions, once: bool, stop: threading.Event, offsets: OffsetsClient) -> IngestTotals:
    """The loop of ``ingest``: plan, let a small batch fill up, run it, report."""
    servers = bootstrap_servers(settings)
    config = WriterConfig(Lake.from_settings(settings), options.pipeline, settings.topic_prefix)
    writer = config.writer()
    topics = [settings.topic(t) for t in options.topics]
    targets = retrying(lambda: offsets.call(lambda c: _end_offsets(c, topics)), "reading end offsets") if once else None
    committed = CommittedOffsets(writer.next_offset)
    beam_options = pipeline_options(options.runner_args)
    totals = IngestTotals()
    waiting_since = time.monotonic()
    avg_bytes = 1024.0
    while not stop.is_set():
        budget = max(1, min(options.max_events, int(options.max_bytes / avg_bytes)))
        planned_ranges = retrying(
            lambda: offsets.call(lambda c: plan_ranges(c, topics, committed, budget)), "planning a batch"  # noqa: B023 (called at once)
        )
        ranges = _clip(planned_ranges, targets)
        if not ranges:
            if once:
                break
            stop.wait(0.5)
            continue
        planned = sum(r.size for r in ranges)
        if not once and planned < budget and time.monotonic() - waiting_since < options.max_wait_s:
            stop.wait(0.2)  # let a small batch fill up until max_wait_s
            continue
        started = time.monotonic()
        batch = Batch.start(config, ranges)  # one id for every run of it, so a retried batch counts what each run committed
        try:
            counts = _retrying_lake(lambda: run_batch(servers, config, batch, beam_options))  # noqa: B023 (called at once)
        except ConcurrentCommit as error:
            log.info("another ingester committed part of this batch first; planning again", extra={"error": str(error)[:500]})
            totals.add(batch.landed(config))
            committed.forget()
            continue
        committed.forget()
        seconds = time.monotonic() - started
        waiting_since = time.monotonic()
        BATCH_SECONDS.observe(seconds)
        for topic, outcomes in counts.items():
            for outcome in OUTCOMES:
                EVENTS.labels(topic, outcome).inc(outcomes.get(outcome, 0))
        totals.add(counts)
        read = sum(c.get("bronze", 0) for c in counts.values())
        avg_bytes = sum(c.get("bytes", 0) for c in counts.values()) / read if read else avg_bytes
        _report_lag(offsets, topics, committed)
        log.info(
            "batch committed",
            extra={"batch": totals.batches, "events": planned, "seconds": round(seconds, 2), "counts": counts},
        )
        if options.compact_every and totals.batches % options.compact_every == 0:
            maintain(settings, options.topics)
    return totals


def _retrying_lake(call: Callable[[], BatchCounts], max_stall_s: float = 120.0) -> BatchCounts:
    """``call()``, tried again with backoff while the lake's storage fails, for up to ``max_stall_s``.

    A batch can run again whole: each of its commits skips the offsets its table already holds.
    Retried: object-store errors, or concurrent commits past delta-rs's retries.
    """
    lake_errors = (OSError, CommitFailedError)
    return retry.retrying(call, "writing a batch to the lake", retry_on=lake_errors, logger=log, first_s=1.0, max_s=15.0, max_stall_s=max_stall_s)


def maintain(settings: Settings, topics: tuple[str, ...]) -> None:
    """Compact small files and write a checkpoint of every table the topics feed."""
    specs = [QUARANTINE, *(BRONZE[t] for t in topics), *(SILVER[t] for t in topics)]
    lake = Lake.from_settings(settings)
    for spec in specs:
        try:
            metrics = optimize(lake, spec.name)
        except UnknownTable:
            continue
        log.info("table compacted", extra={"table": spec.name, "metrics": metrics})


class CommittedOffsets:
    """``LakeWriter.next_offset`` remembered per partition until ``forget()``, which the loop calls after each batch.

    Asking the lake costs three Delta log refreshes per partition, which, twice a second, kept an idle
    ingester at about 3% of a core. Usually only this loop's batches move these offsets; were another ingester
    of the pipeline to move them too, a stale answer would only make the next batch read offsets that its
    tables then skip, or whose commit is fenced out and planned again.
    """

    def __init__(self, next_offset: Callable[[str, int], int | None]) -> None:
        self._next_offset = next_offset
        self._known: dict[tuple[str, int], int | None] = {}

    def __call__(self, topic: str, partition: int) -> int | None:
        key = (topic, partition)
        if key not in self._known:
            self._known[key] = self._next_offset(topic, partition)
        return self._known[key]

    def forget(self) -> None:
        self._known.clear()


class OffsetsClient:
    """One long-lived consumer (no assignment, no group) for the loop's offset look-ups, opened on first use and
    opened again after a broker error.

    A new client for every plan, twice a second, cost an idle ingester about 4% of a core.
    """

    def __init__(self, servers: str, metadata_max_age_s: float = 30.0) -> None:
        self._config = consumer_config(
            servers, reconnect_backoff_ms=200, reconnect_backoff_max_ms=5000, metadata_max_age_ms=int(metadata_max_age_s * 1000)
        )  # the metadata refresh is how partitions added to a topic show up in plans
        self._consumer: KafkaConsumer | None = None

    def call(self, ask: Callable[[KafkaConsumer], T]) -> T:
        """``ask(consumer)``; a ``KafkaError`` it raises closes the client, to be opened afresh next time."""
        if self._consumer is None:
            self._consumer = KafkaConsumer(**self._config)
        try:
            return ask(self._consumer)
        except KafkaError:
            self.close()
            raise

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except KafkaError:
                pass  # a broken client is discarded either way


def _end_offsets(consumer: KafkaConsumer, topics: list[str]) -> dict[tuple[str, int], int]:
    partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    return {(tp.topic, tp.partition): end for tp, end in consumer.end_offsets(partitions).items()}


def _clip(ranges: list[OffsetRange], targets: dict[tuple[str, int], int] | None) -> list[OffsetRange]:
    if targets is None:
        return ranges
    clipped = []
    for r in ranges:
        end = min(r.end, targets.get((r.topic, r.partition), 0))
        if end > r.start:
            clipped.append(OffsetRange(r.topic, r.partition, r.start, end))
    return clipped


def _report_lag(offsets: OffsetsClient, topics: list[str], next_offset: Callable[[str, int], int | None]) -> None:
    try:
        ends = offsets.call(lambda c: _end_offsets(c, topics))
    except KafkaError as error:  # the gauge is refreshed after the next batch
        log.warning("lag not measured", extra={"error": str(error)})
        return
    for (topic, partition), end in ends.items():
        LAG.labels(topic, str(partition)).set(max(0, end - (next_offset(topic, partition) or 0)))
