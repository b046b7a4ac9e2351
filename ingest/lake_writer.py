"""Exactly-once commits of one topic's micro-batch into bronze, quarantine and silver.

Each table's Delta log records, per topic-partition, the last Kafka offset it holds:
``Transaction(app_id="<pipeline>/<topic>/<partition>", version=<last offset>)``, in the
same atomic commit as the rows. A restart reads from the smallest next offset of the
three tables and each table skips the offsets its log already covers, so a crash at any
instant neither loses nor duplicates a record. Silver also drops events whose
``event_id`` it already holds (duplicates), counting them in the commit's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from edgelake.contracts import EVENT_BY_TOPIC
from ingest.clean import rows_to_arrow
from lake.tables import BRONZE, QUARANTINE, SILVER, TableSpec, table_uri


@dataclass
class TopicBatch:
    """What one micro-batch made of one Kafka topic's records; rows carry their partition and offset."""

    topic: str  # the Kafka topic, with any prefix
    last_offsets: dict[int, int]  # partition -> last offset covered by this batch
    bronze: list[dict[str, Any]] = field(default_factory=list)
    silver: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)


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
        committed = [self._committed(spec, topic, partition) for spec in self._tables(topic)]
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
        bronze = self._unwritten(bronze_spec, batch.topic, batch.bronze)
        quarantine = self._unwritten(QUARANTINE, batch.topic, batch.quarantine)
        silver, duplicates = self._new_events(batch.topic, self._unwritten(silver_spec, batch.topic, batch.silver))
        self._append(bronze_spec, batch, pa.Table.from_pylist(bronze, bronze_spec.schema))
        self._append(QUARANTINE, batch, pa.Table.from_pylist(quarantine, QUARANTINE.schema))
        silver_table = rows_to_arrow(silver, self.silver_schema(batch.topic))
        self._append(silver_spec, batch, silver_table, {"duplicates": str(duplicates)})
        return CommitResult(batch.topic, len(bronze), len(silver), len(quarantine), duplicates)

    def _append(
        self,
        spec: TableSpec,
        batch: TopicBatch,
        data: pa.Table,
        metadata: dict[str, str] | None = None,
    ) -> None:
        versions = {p: o for p, o in batch.last_offsets.items() if (self._committed(spec, batch.topic, p) or -1) < o}
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

    def _unwritten(self, spec: TableSpec, topic: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        partition_col, offset_col = ("_partition", "_offset") if spec.layer == "silver" else ("partition", "offset")
        committed: dict[int, int] = {}
        kept = []
        for row in rows:
            p = row[partition_col]
            if p not in committed:
                committed[p] = self._committed(spec, topic, p)  # type: ignore[assignment]
            if committed[p] is None or row[offset_col] > committed[p]:
                kept.append(row)
        return kept

    def _new_events(self, topic: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Rows whose event_id is new to silver and to this batch (first offset wins), and the duplicates."""
        rows = sorted(rows, key=lambda r: (r["_partition"], r["_offset"]))
        seen = self._existing_ids(topic, {row["event_date"] for row in rows})
        fresh = []
        for row in rows:
            if row["event_id"] not in seen:
                seen.add(row["event_id"])
                fresh.append(row)
        return fresh, len(rows) - len(fresh)

    def _existing_ids(self, topic: str, dates: set[Any]) -> set[str]:
        table = self._open(SILVER[self.event_topic(topic)])
        if table is None or not dates:
            return set()
        dataset = table.to_pyarrow_dataset()
        ids = dataset.to_table(columns=["event_id"], filter=pc.field("event_date").isin(sorted(dates)))
        return set(ids.column("event_id").to_pylist())

    def _committed(self, spec: TableSpec, topic: str, partition: int) -> int | None:
        table = self._open(spec)
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

