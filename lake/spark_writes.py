"""Spark results committed into catalog tables, at most once per app transaction.

The one place that chooses how: where the session has delta-spark (``spark.has_delta``), the
executors write the table's files and the driver only commits; elsewhere (a plain ``pip
install pyspark``), the rows are collected to the driver and committed by deltalake. Both
record the same things in the Delta log, so either engine can take over a table:

- ``progress``, an app transaction (``txnAppId``/``txnVersion``): a commit whose app id the
  table already holds at this version or later is skipped, and two writers racing with the
  same one conflict, so a result is committed once.
- ``info``, the commit's ``userMetadata``: a JSON object (``catalog.commit_info``), which ``catalog.history`` shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake

from edgelake.lake.catalog import Lake
from edgelake.lake.spark import has_delta, use_lake_storage
from edgelake.lake.tables import TableSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# delta-spark's session settings that give its next write (DataFrame or SQL) an app transaction and commit metadata.
_TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


@dataclass(frozen=True)
class Commit:
    """What a commit records beside its rows."""

    progress: Transaction | None = None
    info: dict[str, str] = field(default_factory=dict)

    def skipped_by(self, spec: TableSpec, lake: Lake) -> bool:
        """Whether the table already holds ``progress`` at its version or later (the write would be skipped)."""
        if self.progress is None or (table := lake.find(spec.name)) is None:
            return False
        done = table.transaction_version(self.progress.app_id)
        return done is not None and done >= self.progress.version


def replace_rows(spark: SparkSession, lake: Lake, spec: TableSpec, rows: DataFrame, commit: Commit) -> int:
    """Make ``rows`` the table's whole content in one commit; the rows written (0 if ``commit`` was done before)."""
    if commit.skipped_by(spec, lake):
        return 0
    if not has_delta(spark):
        table = _arrow(rows, spec)
        write_deltalake(
            lake.uri(spec), table, mode="overwrite", schema_mode="overwrite", partition_by=list(spec.partition_by),
            name=spec.name, description=spec.description, storage_options=lake.storage_options, commit_properties=_properties(commit),
        )
        return table.num_rows
    existing = lake.find(spec.name)
    if existing is None or pa.schema(existing.schema().to_arrow()) != spec.schema:  # a new table, or a new definition of it
        _reset(lake, spec)
    before = lake.open(spec.name).version()
    use_lake_storage(spark, lake)
    with _writing(spark, commit):
        _conformed(rows, spec).write.format("delta").mode("overwrite").save(lake.uri(spec))
    return _written(lake, spec, before, ("numOutputRows",))


def merge_rows(spark: SparkSession, lake: Lake, spec: TableSpec, rows: DataFrame, on: tuple[str, ...], commit: Commit) -> int:
    """Upsert ``rows`` into the existing table by the ``on`` columns in one commit; the rows inserted or updated."""
    if commit.skipped_by(spec, lake):
        return 0
    if not has_delta(spark):
        table = lake.open(spec.name)
        metrics = (
            table.merge(
                _arrow(rows, spec), " AND ".join(f"t.{c} = s.{c}" for c in on), source_alias="s", target_alias="t",
                commit_properties=_properties(commit),
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return int(metrics["num_target_rows_inserted"] + metrics["num_target_rows_updated"])
    before = lake.open(spec.name).version()
    use_lake_storage(spark, lake)
    source = f"edgelake_merge_{spec.name}"
    _conformed(rows, spec).createOrReplaceTempView(source)
    condition = " AND ".join(f"t.`{c}` = s.`{c}`" for c in on)
    try:
        with _writing(spark, commit):
            spark.sql(
                f"MERGE INTO delta.`{lake.uri(spec)}` AS t USING {source} AS s ON {condition} "
                "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
            )
    finally:
        spark.catalog.dropTempView(source)
    return _written(lake, spec, before, ("numTargetRowsInserted", "numTargetRowsUpdated"))


def _properties(commit: Commit) -> CommitProperties:
    return CommitProperties(
        app_transactions=[commit.progress] if commit.progress else None,
        custom_metadata={"userMetadata": json.dumps(commit.info, sort_keys=True)},
    )


@contextmanager
def _writing(spark: SparkSession, commit: Commit) -> Iterator[None]:
    """delta-spark's settings for the next write of this session: ``commit``'s progress and info."""
    settings = {_USER_METADATA: json.dumps(commit.info, sort_keys=True)}
    if commit.progress is not None:
        settings |= {_TXN_APP_ID: commit.progress.app_id, _TXN_VERSION: str(commit.progress.version)}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in settings:
            spark.conf.unset(key)


def _reset(lake: Lake, spec: TableSpec) -> None:
    """The table emptied with its defined schema, partitions, name and description, which Spark's writes keep.

    Only for a table that does not exist or holds another schema: its next write then fills it.
    """
    write_deltalake(
        lake.uri(spec), spec.schema.empty_table(), mode="overwrite", schema_mode="overwrite", partition_by=list(spec.partition_by),
        name=spec.name, description=spec.description, storage_options=lake.storage_options,
    )


def _written(lake: Lake, spec: TableSpec, before: int, metrics: tuple[str, ...]) -> int:
    """The rows the commit after version ``before`` wrote, by its metrics; 0 if there is none (delta-spark skipped it)."""
    table = lake.open(spec.name)
    if table.version() == before:
        return 0
    commit = table.history(1)[0]
    counted = commit.get("operationMetrics", {})
    return sum(int(counted.get(name, 0)) for name in metrics)


def _conformed(rows: DataFrame, spec: TableSpec) -> DataFrame:
    """``rows`` with exactly the table's columns, in its order and of its types."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type

    return rows.select(*(F.col(f.name).cast(from_arrow_type(f.type)).alias(f.name) for f in spec.schema))


def _arrow(rows: DataFrame, spec: TableSpec) -> pa.Table:
    """A Spark result on the driver as an Arrow table of exactly the table's schema."""
    return rows.toArrow().select(spec.schema.names).cast(spec.schema)
