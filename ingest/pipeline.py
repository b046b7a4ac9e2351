"""The ingest pipeline: one Beam pipeline per micro-batch, from Kafka offset ranges into the lake.

Elements are lists of records, not single records, so Beam's per-element cost is paid
once per few thousand events. Any Beam runner works: the runner and its options are
passed through unchanged (``--runner=FlinkRunner --flink_master=...``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from edgelake.contracts import EVENT_BY_TOPIC
from edgelake.kafka import Record
from ingest.clean import Rejection, clean_record, rows_to_arrow, split_type_conflicts
from ingest.kafka_source import OffsetRange, read_range
from ingest.lake_writer import CommitResult, LakeWriter, TopicBatch
from lake.tables import BRONZE, QUARANTINE

METRICS_NAMESPACE = "edgelake.ingest"
OUTCOMES = ("bronze", "silver", "quarantined", "duplicates")
BatchCounts = dict[str, dict[str, int]]  # logical topic -> outcome (or "bytes" read) -> events


@dataclass(frozen=True)
class WriterConfig:
    """What a worker needs to open the lake (picklable, unlike a LakeWriter's tables)."""

    lake_root: str
    pipeline: str
    topic_prefix: str = ""
    storage_options: dict[str, str] | None = None

    def writer(self) -> LakeWriter:
        return LakeWriter(self.lake_root, self.pipeline, self.topic_prefix, self.storage_options)


@dataclass(frozen=True)
class Chunk:
    """Tables made from one list of a topic's records (Arrow tables pickle cheaply between stages)."""

    bronze: pa.Table
    silver: pa.Table
    quarantine: pa.Table


def pipeline_options(runner_args: Iterable[str]) -> PipelineOptions:
    """Beam options from command-line style arguments; DirectRunner unless a runner is named."""
    args = list(runner_args)
    if not any(arg.startswith("--runner") for arg in args):
        args.append("--runner=DirectRunner")
    return PipelineOptions(args)


def run_batch(servers: str, config: WriterConfig, ranges: list[OffsetRange], options: PipelineOptions) -> BatchCounts:
    """Read, classify and commit ``ranges`` in one Beam pipeline; return the counts per topic."""
    ingest_time = datetime.now(timezone.utc)
    last_offsets: dict[str, dict[int, int]] = defaultdict(dict)
    for r in ranges:
        last_offsets[r.topic][r.partition] = r.end - 1
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "offset ranges" >> beam.Create(ranges)
        | "spread" >> beam.Reshuffle()
        | "read kafka" >> beam.ParDo(ReadRange(servers))
        | "classify" >> beam.ParDo(Classify(config, ingest_time))
        | "by topic" >> beam.GroupByKey()
        | "commit" >> beam.ParDo(Commit(config, dict(last_offsets)))
    )
    result = p.run()
    result.wait_until_finish()
    counts: BatchCounts = defaultdict(dict)
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        topic, outcome = counter.key.metric.name.rsplit(".", 1)
        counts[topic][outcome] = counts[topic].get(outcome, 0) + (counter.committed or counter.attempted)
    return dict(counts)


class ReadRange(beam.DoFn):
    """An offset range as lists of records, keyed by topic."""

    def __init__(self, servers: str) -> None:
        self.servers = servers

    def process(self, offsets: OffsetRange) -> Iterator[tuple[str, list[Record]]]:
        for records in read_range(self.servers, offsets):
            yield offsets.topic, records


class Classify(beam.DoFn):
    """Records as bronze rows plus, for each, a clean silver row or a quarantine row."""

    def __init__(self, config: WriterConfig, ingest_time: datetime) -> None:
        self.config = config
        self.ingest_time = ingest_time

    def setup(self) -> None:
        self.writer = self.config.writer()
        self.schemas: dict[str, Any] = {}

    def process(self, element: tuple[str, list[Record]]) -> Iterator[tuple[str, Chunk]]:
        topic, records = element
        if topic not in self.schemas:
            self.schemas[topic] = self.writer.silver_schema(topic)
        schema = self.schemas[topic]
        logical = self.writer.event_topic(topic)
        event_type = EVENT_BY_TOPIC[logical]
        Metrics.counter(METRICS_NAMESPACE, f"{logical}.bytes").inc(sum(len(r.value) for r in records))
        bronze, silver, quarantine = [], [], []
        now = datetime.now(timezone.utc)
        for record in records:
            raw = self._bronze(record)
            bronze.append(raw)
            outcome = clean_record(event_type, record.value, schema, now)
            if isinstance(outcome, Rejection):
                quarantine.append(quarantine_row(raw, outcome))
            else:
                outcome.update(
                    _topic=record.topic, _partition=record.partition, _offset=record.offset, _ingest_time=self.ingest_time
                )
                silver.append(outcome)
        yield topic, Chunk(
            pa.Table.from_pylist(bronze, BRONZE[logical].schema),
            *silver_and_quarantine(silver, quarantine, bronze, schema),
        )

    def _bronze(self, record: Record) -> dict[str, Any]:
        return {
            "key": record.key,
            "value": record.value,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "kafka_timestamp": datetime.fromtimestamp(record.timestamp_ms / 1000, timezone.utc),
            "ingest_time": self.ingest_time,
            "ingest_date": self.ingest_time.date(),
        }



class Commit(beam.DoFn):
    """All chunks of one topic committed into the lake, exactly once."""

    def __init__(self, config: WriterConfig, last_offsets: dict[str, dict[int, int]]) -> None:
        self.config = config
        self.last_offsets = last_offsets

    def setup(self) -> None:
        self.writer = self.config.writer()

    def process(self, element: tuple[str, Iterable[Chunk]]) -> Iterator[CommitResult]:
        """Merge the chunks and commit them."""
        topic, chunks = element
        chunks = list(chunks)
        silver = _concat([c.silver for c in chunks])
        if silver is None:  # chunks gave a new column different types: decide row by row
            rows = sorted((row for c in chunks for row in c.silver.to_pylist()), key=lambda r: (r["_partition"], r["_offset"]))
            raw = [row for c in chunks for row in c.bronze.to_pylist()]
            quarantined = [row for c in chunks for row in c.quarantine.to_pylist()]
            silver, quarantine = silver_and_quarantine(rows, quarantined, raw, self.writer.silver_schema(topic))
        else:
            quarantine = pa.concat_tables([c.quarantine for c in chunks])
        batch = TopicBatch(
            topic, self.last_offsets[topic], pa.concat_tables([c.bronze for c in chunks]), silver, quarantine
        )
        result = self.writer.commit(batch)
        logical = self.writer.event_topic(topic)
        for outcome in OUTCOMES:
            Metrics.counter(METRICS_NAMESPACE, f"{logical}.{outcome}").inc(getattr(result, outcome))
        yield result


def silver_and_quarantine(
    silver: list[dict[str, Any]], quarantine: list[dict[str, Any]], bronze: list[dict[str, Any]], schema: pa.Schema
) -> tuple[pa.Table, pa.Table]:
    """Silver and quarantine tables of classified rows; silver rows whose new columns clash in type go to quarantine."""
    silver, conflicts = split_type_conflicts(silver, schema)
    if conflicts:
        raw = {(row["partition"], row["offset"]): row for row in bronze}
        quarantine = quarantine + [quarantine_row(raw[(r["_partition"], r["_offset"])], why) for r, why in conflicts]
    return rows_to_arrow(silver, schema), pa.Table.from_pylist(quarantine, QUARANTINE.schema)


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    """One table of all, new columns filled with nulls; None if they give a column different types."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def quarantine_row(bronze: dict[str, Any], rejection: Rejection) -> dict[str, Any]:
    """The quarantine row of a raw record (as its bronze row) and why it was refused."""
    row = {key: bronze[key] for key in ("key", "value", "topic", "partition", "offset", "ingest_time", "ingest_date")}
    return {**row, "stage": rejection.stage, "reason": rejection.reason}
