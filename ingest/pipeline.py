"""The ingest pipeline: one Beam pipeline per micro-batch, from Kafka offset ranges into the lake.

Beam spreads the batch's offset ranges (one per topic-partition) over its workers; each
range is read, classified and committed by one step, so record data never moves between
workers: moving it costs the DirectRunner more than classifying it. Each range commits
by itself, which is all exactly-once needs, since offsets are tracked per partition. Any
Beam runner works: the runner and its options are passed through unchanged
(``--runner=FlinkRunner --flink_master=...``; ``--runner=DaskRunner
--dask_client_address=tcp://...`` for Beam's Dask runner on a Dask cluster). A batch's
counts are read back from its commits in the Delta logs, which every runner leaves behind
(the DaskRunner reports no Beam metrics).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from edgelake.contracts import EVENT_BY_TOPIC, Event
from edgelake.ingest.clean import Rejection, clean_record, rows_to_arrow, split_type_conflicts
from edgelake.ingest.columnar import ColumnarContract, columnar_contract
from edgelake.ingest.kafka_source import Fetched, OffsetRange, RangeReader
from edgelake.ingest.lake_writer import CommitResult, LakeWriter, TopicBatch
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import BRONZE_SCHEMA, QUARANTINE, TIMESTAMP

OUTCOMES = ("bronze", "silver", "quarantined", "duplicates")
BatchCounts = dict[str, dict[str, int]]  # logical topic -> outcome (or "bytes" of the values landed in bronze) -> events
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam knows this runner by its path only


@dataclass(frozen=True)
class WriterConfig:
    """What a worker needs to open the lake (picklable, unlike a LakeWriter's tables)."""

    lake: Lake
    pipeline: str
    topic_prefix: str = ""

    def writer(self) -> LakeWriter:
        return LakeWriter(self.lake, self.pipeline, self.topic_prefix)


@dataclass(frozen=True)
class Chunk:
    """Tables made from a piece of a range's records."""

    bronze: pa.Table
    silver: pa.Table
    quarantine: pa.Table


def pipeline_options(runner_args: Iterable[str]) -> PipelineOptions:
    """Beam options from command-line style arguments; DirectRunner unless a runner is named.

    ``DaskRunner`` names Beam's Dask runner, which then puts each offset range in a Dask
    partition of its own (Beam's default puts up to 128 in one, all run by one worker)
    unless ``--dask_npartitions`` or ``--dask_partition_size`` says otherwise.
    """
    args = list(runner_args)
    runner = PipelineOptions(args).view_as(StandardOptions).runner or "DirectRunner"
    if runner in ("DaskRunner", DASK_RUNNER):
        runner = DASK_RUNNER
        if not any(arg.startswith(("--dask_npartitions", "--dask_partition_size")) for arg in args):
            args.append("--dask_partition_size=1")
    options = PipelineOptions(args)
    options.view_as(StandardOptions).runner = runner
    return options


@dataclass(frozen=True)
class Batch:
    """One micro-batch: the offset ranges it commits, the id its commits carry and the versions the tables had before."""

    ranges: list[OffsetRange]
    batch_id: str
    since: dict[str, int]

    @classmethod
    def start(cls, config: WriterConfig, ranges: list[OffsetRange]) -> Batch:
        return cls(ranges, uuid.uuid4().hex, config.writer().versions({r.topic for r in ranges}))

    def landed(self, config: WriterConfig) -> BatchCounts:
        """The counts per topic its commits record, whichever run of it (a retried one) made them."""
        return config.writer().landed(self.batch_id, self.since)


def run_batch(servers: str, config: WriterConfig, batch: Batch, options: PipelineOptions) -> BatchCounts:
    """Read, classify and commit ``batch``'s ranges in one Beam pipeline; return the counts per topic, as its commits record them."""
    ranges, batch_id = batch.ranges, batch.batch_id
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "offset ranges" >> beam.Create(ranges)
        | "spread" >> beam.Reshuffle()
        | "ingest" >> beam.ParDo(IngestRange(servers, config, datetime.now(UTC), batch_id))
    )
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        _close_client(result)
    return batch.landed(config)


def _close_client(result: PipelineResult) -> None:
    """Close the Dask client that Beam's DaskRunner opens for each pipeline and leaves open."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


class IngestRange(beam.DoFn):
    """One topic-partition's offset range read from Kafka, classified and committed into the lake, exactly once.

    A range commits on a background thread while the next range of the bundle is read:
    the Delta write runs in Rust, beside the Python-bound Kafka reads. Commits keep
    their order, and the bundle finishes only when all have landed. One consumer reads
    every range this instance is given.
    """

    def __init__(self, servers: str, config: WriterConfig, ingest_time: datetime, batch_id: str) -> None:
        self.servers = servers
        self.config = config
        self.ingest_time = ingest_time
        self.batch_id = batch_id

    def setup(self) -> None:
        self.reader = self.config.writer()  # the silver schema, on this thread
        self.committer = self.config.writer()  # used by the commit thread only
        self.commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self.records = RangeReader(self.servers)
        self.lanes = {topic: columnar_contract(event) for topic, event in EVENT_BY_TOPIC.items()}

    def start_bundle(self) -> None:
        self.pending: list[Future[CommitResult]] = []

    def process(self, offsets: OffsetRange) -> None:
        logical = self.reader.event_topic(offsets.topic)
        schema = self.reader.silver_schema(offsets.topic)
        chunks = []
        for fetched in self.records.read(offsets):
            bronze = bronze_rows(fetched, self.ingest_time)
            chunks.append(classify(bronze, fetched.values, EVENT_BY_TOPIC[logical], self.lanes[logical], schema))
        self.pending.append(self.commits.submit(self.committer.commit, merged(offsets, chunks, schema, self.batch_id)))

    def finish_bundle(self) -> None:
        for commit in self.pending:
            commit.result()

    def teardown(self) -> None:
        self.commits.shutdown()
        self.records.close()


def classify(
    bronze: pa.Table, values: list[bytes], event_type: type[Event], lane: ColumnarContract | None, schema: pa.Schema
) -> Chunk:
    """Each record of a bronze table (whose values are ``values``) as a clean silver row or a quarantine row.

    The columnar fast lane takes the records that pass every check as sent; ``clean_record``
    decides the rest one by one.
    """
    now = datetime.now(UTC)
    accepted = lane.accept(values, now) if lane is not None else None
    rest = accepted.rest if accepted is not None else list(range(len(values)))
    raw = bronze.take(pa.array(rest, pa.int64())).to_pylist()
    silver, quarantine = [], []
    for row in raw:
        outcome = clean_record(event_type, row["value"], schema, now)
        if isinstance(outcome, Rejection):
            quarantine.append(quarantine_row(row, outcome))
        else:
            lineage = {"_topic": row["topic"], "_partition": row["partition"], "_offset": row["offset"]}
            outcome.update(lineage, _ingest_time=row["ingest_time"])
            silver.append(outcome)
    decided, quarantined = silver_and_quarantine(silver, quarantine, raw, schema)
    if accepted is None:
        return Chunk(bronze, decided, quarantined)
    silver_rows = _concat([_with_lineage(accepted.table, bronze, accepted.indices), decided])
    if silver_rows is None:
        raise TypeError("fast-lane rows do not fit the silver schema")  # both follow the contract: a bug if reached
    return Chunk(bronze, silver_rows, quarantined)


def merged(offsets: OffsetRange, chunks: list[Chunk], schema: pa.Schema, batch_id: str = "") -> TopicBatch:
    """One range's chunks as one batch to commit, of micro-batch ``batch_id``."""
    silver = _concat([c.silver for c in chunks]) if chunks else schema.empty_table()
    if silver is None:  # chunks gave a new column different types: decide row by row, in offset order
        rows = [row for c in chunks for row in c.silver.to_pylist()]
        rows.sort(key=lambda r: r["_offset"])
        raw = [row for c in chunks for row in c.bronze.to_pylist()]
        quarantined = [row for c in chunks for row in c.quarantine.to_pylist()]
        silver, quarantine = silver_and_quarantine(rows, quarantined, raw, schema)
    else:
        quarantine = pa.concat_tables([c.quarantine for c in chunks]) if chunks else QUARANTINE.schema.empty_table()
    bronze = pa.concat_tables([c.bronze for c in chunks]) if chunks else BRONZE_SCHEMA.empty_table()
    return TopicBatch(offsets.topic, {offsets.partition: offsets.end - 1}, bronze, silver, quarantine, batch_id)


def _with_lineage(table: pa.Table, bronze: pa.Table, indices: list[int]) -> pa.Table:
    """Fast-lane rows with the lineage columns of their records."""
    taken = bronze.select(["topic", "partition", "offset", "ingest_time"]).take(pa.array(indices, pa.int64()))
    for name in ("topic", "partition", "offset", "ingest_time"):
        table = table.append_column(f"_{name}", taken[name])
    return table


def bronze_rows(fetched: Fetched, ingest_time: datetime) -> pa.Table:
    """Fetched records as a bronze table."""
    rows = len(fetched)
    kafka_time = pa.array(fetched.timestamps_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    columns = {
        "key": pa.array(fetched.keys, pa.binary()),
        "value": pa.array(fetched.values, pa.binary()),
        "topic": pa.repeat(pa.scalar(fetched.offsets.topic, pa.string()), rows),
        "partition": pa.repeat(pa.scalar(fetched.offsets.partition, pa.int32()), rows),
        "offset": pa.array(fetched.positions, pa.int64()),
        "kafka_timestamp": kafka_time.cast(TIMESTAMP),
        "ingest_time": pa.repeat(pa.scalar(ingest_time, TIMESTAMP), rows),
        "ingest_date": pa.repeat(pa.scalar(ingest_time.date(), pa.date32()), rows),
    }
    return pa.Table.from_pydict(columns, schema=BRONZE_SCHEMA)


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
