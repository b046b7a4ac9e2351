"""Exactly-once commits of one topic's micro-batch into bronze, quarantine and silver.

Each table's Delta log records, per topic-partition, the last Kafka offset it holds:
``Transaction(app_id=ingest_app_id(pipeline, topic, partition), version=<last offset>)``, in the
same atomic commit as the rows. A restart reads from the smallest next offset of the
three tables and each table skips the offsets its log already covers, so a crash at any
instant neither loses nor duplicates a record. Silver also drops events whose
``event_id`` it already holds (duplicates), counting them in the commit's metadata.

Each commit's metadata names its micro-batch (``batch``), so a batch's counts can be read back
from the logs (:meth:`LakeWriter.landed`), whichever runner and processes made the commits.

Commits are fenced: each one is made on the snapshot its rows were chosen on, so Delta's
conflict check refuses it if another writer committed the same app transaction (the same
topic-partition) since. Two ingesters of one pipeline on the same partitions therefore never
both land an offset: the loser raises :class:`ConcurrentCommit` and plans again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from edgelake.contracts import EVENT_BY_TOPIC
from edgelake.lake.catalog import Lake, ingest_app_id, spec_of
from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER, TableSpec, current_schema

LANDED = ("bronze", "silver", "quarantined", "duplicates", "bytes")  # what ``LakeWriter.landed`` counts
_OUTCOME = {"bronze": "bronze", "silver": "silver", "quarantine": "quarantined"}  # a table's layer -> what its rows count as


class ConcurrentCommit(Exception):
    """Another writer committed some of a batch's offsets into a table first: the batch must be planned again."""


@dataclass(frozen=True)
class TopicBatch:
    """What one micro-batch made of one Kafka topic's records; rows carry their partition and offset."""

    topic: str  # the Kafka topic, with any prefix
    last_offsets: dict[int, int]  # partition -> last offset covered by this batch
    bronze: pa.Table
    silver: pa.Table
    quarantine: pa.Table
    batch_id: str = ""  # the micro-batch, named in each commit's metadata


@dataclass(frozen=True)
class CommitResult:
    topic: str
    bronze: int
    silver: int
    quarantined: int
    duplicates: int


class LakeWriter:
    """Commits micro-batches of a named pipeline into ``lake``.

    Topics are Kafka topic names; ``topic_prefix`` is stripped to find their tables.
    """

    def __init__(self, lake: Lake, pipeline: str, topic_prefix: str = "") -> None:
        self.lake = lake
        self.pipeline = pipeline
        self.topic_prefix = topic_prefix
        self._logs: dict[str, DeltaTable] = {}

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The first offset some table of ``topic`` does not hold yet; None if none holds any."""
        committed = [self._committed(self._open(spec), topic, partition) for spec in self._tables(topic)]
        if any(version is None for version in committed):
            return None
        return min(version for version in committed if version is not None) + 1

    def silver_schema(self, topic: str) -> pa.Schema:
        """The silver table's current schema (with evolved columns and any its contract gained since), or its defined one."""
        spec = SILVER[self.event_topic(topic)]
        table = self._open(spec)
        return current_schema(spec, pa.schema(table.schema().to_arrow())) if table is not None else spec.schema

    def commit(self, batch: TopicBatch) -> CommitResult:
        """Write bronze, then quarantine, then silver, each skipping offsets its log holds."""
        bronze_spec, _, silver_spec = self._tables(batch.topic)
        logs = {spec.name: self._open(spec) for spec in (bronze_spec, QUARANTINE, silver_spec)}  # one log read each
        bronze = self._unwritten(bronze_spec, logs[bronze_spec.name], batch.topic, batch.bronze)
        quarantine = self._unwritten(QUARANTINE, logs[QUARANTINE.name], batch.topic, batch.quarantine)
        silver_log = logs[silver_spec.name]
        known = _silver_ids(self.lake.uri(silver_spec))
        silver, duplicates = known.new_events(silver_log, self._unwritten(silver_spec, silver_log, batch.topic, batch.silver))
        values_bytes = pc.sum(pc.binary_length(bronze["value"])).as_py() or 0
        self._append(bronze_spec, logs[bronze_spec.name], batch, bronze, {"bytes": str(values_bytes)})
        self._append(QUARANTINE, logs[QUARANTINE.name], batch, quarantine)
        if self._append(silver_spec, silver_log, batch, silver, {"duplicates": str(duplicates)}):
            known.committed(self._open(silver_spec), silver)
        return CommitResult(batch.topic, bronze.num_rows, silver.num_rows, quarantine.num_rows, duplicates)

    def _append(
        self,
        spec: TableSpec,
        table: DeltaTable | None,
        batch: TopicBatch,
        data: pa.Table,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Commit ``data`` with the batch's offsets on ``table``, the snapshot it was chosen on; False if that holds the whole batch."""
        committed = {p: self._committed(table, batch.topic, p) for p in batch.last_offsets}
        versions = {p: o for p, o in batch.last_offsets.items() if (done := committed[p]) is None or done < o}
        if not versions:
            return False
        if table is None:
            self.lake.create(spec)
            table = self.lake.open(spec.name, 0)  # empty, as planned on
        try:
            write_deltalake(
                table,
                data,
                mode="append",
                schema_mode="merge",
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(ingest_app_id(self.pipeline, batch.topic, p), o) for p, o in sorted(versions.items())],
                    custom_metadata={"pipeline": self.pipeline, "topic": batch.topic, "batch": batch.batch_id, **(metadata or {})},
                ),
            )
        except CommitFailedError as error:
            raise ConcurrentCommit(
                f"{spec.name}: another writer committed offsets of {batch.topic} partition(s) {sorted(versions)} first ({error})"
            ) from error
        return True

    def versions(self, topics: Iterable[str]) -> dict[str, int]:
        """The version of each table the Kafka ``topics`` feed (-1 for one not written yet): where a batch's commits will start."""
        specs = {spec.name: spec for topic in topics for spec in self._tables(topic)}
        return {name: -1 if (table := self._open(spec)) is None else table.version() for name, spec in specs.items()}

    def landed(self, batch_id: str, since: dict[str, int]) -> dict[str, dict[str, int]]:
        """What micro-batch ``batch_id`` committed to the tables after the versions ``since`` (see ``versions``), per logical
        topic: the rows of each outcome (bronze, silver, quarantined), the duplicates silver dropped and the bytes of the values."""
        counts: dict[str, dict[str, int]] = {}
        for name, version in since.items():
            spec = spec_of(name)
            table = self._open(spec)
            commits = table.history(table.version() - version) if table is not None and table.version() > version else []
            for commit in (c for c in commits if c.get("batch") == batch_id):
                mine = counts.setdefault(self.event_topic(commit["topic"]), dict.fromkeys(LANDED, 0))
                mine[_OUTCOME[spec.layer]] += int(commit.get("operationMetrics", {}).get("num_added_rows", 0))
                for key in ("duplicates", "bytes"):
                    mine[key] += int(commit.get(key, 0))
        return counts

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

    def _committed(self, table: DeltaTable | None, topic: str, partition: int) -> int | None:
        return None if table is None else table.transaction_version(ingest_app_id(self.pipeline, topic, partition))

    def _open(self, spec: TableSpec) -> DeltaTable | None:
        """The table at its latest version; None if it does not exist yet."""
        table = self._logs.get(spec.name)
        if table is not None:
            table.update_incremental()
            return table
        table = self.lake.find(spec.name)
        if table is not None:
            self._logs[spec.name] = table
        return table

    def event_topic(self, topic: str) -> str:
        """The logical topic (``transactions``) of a Kafka topic (``<prefix>transactions``)."""
        logical = topic.removeprefix(self.topic_prefix)
        if logical not in EVENT_BY_TOPIC:
            raise ValueError(f"'{topic}' is not an edgelake topic")
        return logical

    def _tables(self, topic: str) -> tuple[TableSpec, TableSpec, TableSpec]:
        logical = self.event_topic(topic)
        return BRONZE[logical], QUARANTINE, SILVER[logical]


class SilverIds:
    """The event ids a silver table holds on the event dates recent commits touched.

    A date's ids are read from the table once, then kept current with this process's own
    commits; all are dropped when the table moved on without them (another writer, a
    compaction) and read again when next needed. Only the ``max_dates`` most recently
    used dates are kept, which bounds memory for a long-running ingester.
    """

    def __init__(self, max_dates: int = 64) -> None:
        self.max_dates = max_dates
        self.version: int | None = None
        self.by_date: OrderedDict[date, list[pa.Array]] = OrderedDict()

    def new_events(self, silver: DeltaTable | None, rows: pa.Table) -> tuple[pa.Table, int]:
        """Rows whose event_id is new to silver and to this batch (first offset wins), and how many are not."""
        if rows.num_rows == 0:
            return rows, 0
        rows = rows.sort_by([("_partition", "ascending"), ("_offset", "ascending")])
        ids = rows["event_id"].combine_chunks()
        first = np.zeros(rows.num_rows, dtype=bool)
        first[np.unique(pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False), return_index=True)[1]] = True
        keep = pa.array(first)
        held = self._held(silver, set(pc.unique(rows["event_date"]).to_pylist()))
        if held:
            keep = pc.and_(keep, pc.invert(pc.is_in(ids, value_set=pa.concat_arrays(held))))
        fresh = rows.filter(keep)
        return fresh, rows.num_rows - fresh.num_rows

    def committed(self, silver: DeltaTable | None, rows: pa.Table) -> None:
        """Record the rows a commit added; forget everything if the table moved on without us."""
        if silver is None or self.version is None or silver.version() != self.version + 1:
            self.by_date.clear()
            self.version = None
            return
        self.version = silver.version()
        grouped = rows.group_by("event_date", use_threads=False).aggregate([("event_id", "list")])
        for day, ids in zip(grouped["event_date"].to_pylist(), grouped["event_id_list"].combine_chunks(), strict=True):
            if day in self.by_date:
                self.by_date[day].append(ids.values)

    def _held(self, silver: DeltaTable | None, dates: set[date]) -> list[pa.Array]:
        version = None if silver is None else silver.version()
        if version != self.version:
            self.by_date.clear()
            self.version = version
        missing = sorted(day for day in dates if day not in self.by_date)
        for day in missing:
            self.by_date[day] = []
        if missing and silver is not None:
            ids = silver.to_pyarrow_dataset().to_table(columns=["event_id", "event_date"], filter=pc.field("event_date").isin(missing))
            grouped = ids.group_by("event_date", use_threads=False).aggregate([("event_id", "list")])
            for day, held in zip(grouped["event_date"].to_pylist(), grouped["event_id_list"].combine_chunks(), strict=True):
                self.by_date[day].append(held.values)
        for day in dates:
            self.by_date.move_to_end(day)
        while len(self.by_date) > max(self.max_dates, len(dates)):
            self.by_date.popitem(last=False)
        return [ids for day in dates for ids in self.by_date[day]]


_KNOWN_IDS: dict[str, SilverIds] = {}  # silver table URI -> ids; shared by this process's writers, across batches


def _silver_ids(uri: str) -> SilverIds:
    return _KNOWN_IDS.setdefault(uri, SilverIds())
