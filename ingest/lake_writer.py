"""Exactly-once commits of one topic's micro-batch into bronze, quarantine and silver.

Each table's Delta log records, per topic-partition, the last Kafka offset it holds:
``Transaction(app_id="<pipeline>/<topic>/<partition>", version=<last offset>)``, in the
same atomic commit as the rows. A restart reads from the smallest next offset of the
three tables and each table skips the offsets its log already covers, so a crash at any
instant neither loses nor duplicates a record. Silver also drops events whose
``event_id`` it already holds (duplicates), counting them in the commit's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from edgelake.contracts import EVENT_BY_TOPIC
from lake.tables import BRONZE, QUARANTINE, SILVER, TableSpec, table_uri


@dataclass(frozen=True)
class TopicBatch:
    """What one micro-batch made of one Kafka topic's records; rows carry their partition and offset."""

    topic: str  # the Kafka topic, with any prefix
    last_offsets: dict[int, int]  # partition -> last offset covered by this batch
    bronze: pa.Table
    silver: pa.Table
    quarantine: pa.Table


@dataclass(frozen=True)
class CommitResult:
    topic: str
    bronze: int
    silver: int
    quarantined: int
    duplicates: int


class LakeWriter:
    """Commits micro-batches of a named pipeline into the lake under ``lake_root``.

    Topics are Kafka topic names; ``topic_prefix`` is stripped to find their tables.
    """

    def __init__(
        self, lake_root: str, pipeline: str, topic_prefix: str = "", storage_options: dict[str, str] | None = None
    ) -> None:
        self.lake_root = lake_root
        self.pipeline = pipeline
        self.topic_prefix = topic_prefix
        self.storage_options = storage_options

    def app_id(self, topic: str, partition: int) -> str:
        return f"{self.pipeline}/{topic}/{partition}"

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The first offset some table of ``topic`` does not hold yet; None if none holds any."""
        committed = [self._committed(self._open(spec), topic, partition) for spec in self._tables(topic)]
        if any(version is None for version in committed):
            return None
        return min(committed) + 1  # type: ignore[type-var]

    def silver_schema(self, topic: str) -> pa.Schema:
        """The silver table's current schema (with evolved columns), or its defined one."""
        spec = SILVER[self.event_topic(topic)]
        table = self._open(spec)
        return pa.schema(table.schema().to_arrow()) if table is not None else spec.schema

    def commit(self, batch: TopicBatch) -> CommitResult:
        """Write bronze, then quarantine, then silver, each skipping offsets its log holds."""
        bronze_spec, _, silver_spec = self._tables(batch.topic)
        logs = {spec.name: self._open(spec) for spec in (bronze_spec, QUARANTINE, silver_spec)}  # one log read each
        bronze = self._unwritten(bronze_spec, logs[bronze_spec.name], batch.topic, batch.bronze)
        quarantine = self._unwritten(QUARANTINE, logs[QUARANTINE.name], batch.topic, batch.quarantine)
        silver_log = logs[silver_spec.name]
        silver, duplicates = self._new_events(
            silver_log, self._unwritten(silver_spec, silver_log, batch.topic, batch.silver)
        )
        self._append(bronze_spec, logs[bronze_spec.name], batch, bronze)
        self._append(QUARANTINE, logs[QUARANTINE.name], batch, quarantine)
        self._append(silver_spec, silver_log, batch, silver, {"duplicates": str(duplicates)})
        return CommitResult(batch.topic, bronze.num_rows, silver.num_rows, quarantine.num_rows, duplicates)

    def _append(
        self,
        spec: TableSpec,
        table: DeltaTable | None,
        batch: TopicBatch,
        data: pa.Table,
        metadata: dict[str, str] | None = None,
    ) -> None:
        versions = {p: o for p, o in batch.last_offsets.items() if (self._committed(table, batch.topic, p) or -1) < o}
        if not versions:
            return  # this table already holds the whole batch
        self._ensure(spec)
        write_deltalake(
            table_uri(self.lake_root, spec),
            data,
            mode="append",
            schema_mode="merge",
            storage_options=self.storage_options,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(self.app_id(batch.topic, p), o) for p, o in sorted(versions.items())],
                custom_metadata={"pipeline": self.pipeline, "topic": batch.topic, **(metadata or {})},
            ),
        )

    def _unwritten(self, spec: TableSpec, table: DeltaTable | None, topic: str, rows: pa.Table) -> pa.Table:
        """The rows at offsets the table's log does not cover yet."""
        partition_col, offset_col = ("_partition", "_offset") if spec.layer == "silver" else ("partition", "offset")
        if rows.num_rows == 0:
            return rows
        mask = None
        for partition in pc.unique(rows[partition_col]).to_pylist():
            keep = pc.equal(rows[partition_col], partition)
            committed = self._committed(table, topic, partition)
            if committed is not None:
                keep = pc.and_(keep, pc.greater(rows[offset_col], committed))
            mask = keep if mask is None else pc.or_(mask, keep)
        return rows.filter(mask)

    def _new_events(self, silver: DeltaTable | None, rows: pa.Table) -> tuple[pa.Table, int]:
        """Rows whose event_id is new to silver and to this batch (first offset wins), and the duplicates."""
        if rows.num_rows == 0:
            return rows, 0
        rows = rows.sort_by([("_partition", "ascending"), ("_offset", "ascending")])
        seen = _existing_ids(silver, set(pc.unique(rows["event_date"]).to_pylist()))
        keep = []
        for event_id in rows["event_id"].to_pylist():
            keep.append(event_id not in seen)
            seen.add(event_id)
        fresh = rows.filter(pa.array(keep, pa.bool_()))
        return fresh, rows.num_rows - fresh.num_rows

    def _committed(self, table: DeltaTable | None, topic: str, partition: int) -> int | None:
        return None if table is None else table.transaction_version(self.app_id(topic, partition))

    def _open(self, spec: TableSpec) -> DeltaTable | None:
        try:
            return DeltaTable(table_uri(self.lake_root, spec), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def _ensure(self, spec: TableSpec) -> None:
        DeltaTable.create(
            table_uri(self.lake_root, spec),
            spec.schema,
            mode="ignore",
            partition_by=list(spec.partition_by),
            name=spec.name,
            description=spec.description,
            storage_options=self.storage_options,
        )

    def event_topic(self, topic: str) -> str:
        """The logical topic (``transactions``) of a Kafka topic (``<prefix>transactions``)."""
        logical = topic.removeprefix(self.topic_prefix)
        if logical not in EVENT_BY_TOPIC:
            raise ValueError(f"'{topic}' is not an edgelake topic")
        return logical

    def _tables(self, topic: str) -> tuple[TableSpec, TableSpec, TableSpec]:
        logical = self.event_topic(topic)
        return BRONZE[logical], QUARANTINE, SILVER[logical]


def _existing_ids(silver: DeltaTable | None, dates: set[date]) -> set[str]:
    """The event ids silver holds on ``dates`` (a duplicate has its original's event date)."""
    if silver is None or not dates:
        return set()
    ids = silver.to_pyarrow_dataset().to_table(columns=["event_id"], filter=pc.field("event_date").isin(sorted(dates)))
    return set(ids.column("event_id").to_pylist())
