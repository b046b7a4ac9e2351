"""Gold tables computed by Spark from silver snapshots and committed through deltalake, exactly once.

Each gold commit records what it processed as app transactions in its own Delta log,
like the ingester's offsets:

- ``gold_card_features`` and ``gold_device_health`` record, per silver ``(_topic,
  _partition)``, the highest ``_offset`` they cover (app id ``<gold>/<topic>/<partition>``).
  A run takes the silver rows above those offsets, recomputes every card (or device
  minute) they touch from the whole of silver, so late events also correct later rows,
  and upserts the result with the new offsets in one merge commit. A run that dies
  before committing is simply redone; no new silver rows means no commit.
- ``gold_card_features`` also records ``FEATURE_VERSION``; a table built with another
  version is rebuilt from scratch.
- ``gold_fraud_rates`` is small and late labels change old days, so it is recomputed
  whole and overwritten, recording the silver versions it read; it is skipped while
  neither silver table has a new version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import CommitProperties, Transaction, write_deltalake

from edgelake.contracts import FraudLabel, IoTReading
from edgelake.contracts import Transaction as CardTransaction
from edgelake.lake.catalog import Lake
from edgelake.lake.features.batch import with_card_features
from edgelake.lake.features.definitions import FEATURE_VERSION
from edgelake.lake.spark import read_table
from edgelake.lake.tables import GOLD_CARD_FEATURES, GOLD_DEVICE_HEALTH, GOLD_FRAUD_RATES, SILVER, TableSpec

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import Column, DataFrame, SparkSession

JOB = "build-gold"
SILVER_TRANSACTIONS = SILVER[CardTransaction.topic].name
SILVER_LABELS = SILVER[FraudLabel.topic].name
SILVER_READINGS = SILVER[IoTReading.topic].name


@dataclass(frozen=True)
class GoldResult:
    """What one gold table's build did."""

    table: str
    changed: bool  # whether a commit was made
    rows_in: int  # silver rows taken in: new ones for incremental tables, all transactions for fraud rates
    rows_out: int  # gold rows written (inserted or updated)
    seconds: float
    detail: str


@dataclass(frozen=True)
class _Incremental:
    """A gold table kept current from the silver rows above the offsets it records."""

    spec: TableSpec
    source: str  # the silver table's name
    keys: tuple[str, ...]  # the columns of ``prepare``'s rows naming what a new row affects
    prepare: Callable[[DataFrame], DataFrame]  # silver rows -> rows with the key columns
    compute: Callable[[DataFrame], DataFrame]  # prepared rows of whole keys -> gold rows
    merge_on: tuple[str, ...]  # a gold row's identity
    feature_version: int | None = None  # the definitions' version; another one rebuilds the table

    def app_id(self, topic: str, partition: int) -> str:
        return f"{self.spec.name}/{topic}/{partition}"

    @property
    def feature_version_app_id(self) -> str:
        return f"{self.spec.name}/feature_version"


def build_card_features(spark: SparkSession, lake: Lake) -> GoldResult:
    """Bring ``gold_card_features`` up to date with silver transactions."""
    return _build_incremental(spark, lake, _CARD_FEATURES)


def card_features_version(table: DeltaTable) -> int | None:
    """The ``FEATURE_VERSION`` a ``gold_card_features`` table was built with; None if it records none."""
    return table.transaction_version(_CARD_FEATURES.feature_version_app_id)


def build_device_health(spark: SparkSession, lake: Lake) -> GoldResult:
    """Bring ``gold_device_health`` up to date with silver IoT readings."""
    return _build_incremental(spark, lake, _DEVICE_HEALTH)


def build_fraud_rates(spark: SparkSession, lake: Lake) -> GoldResult:
    """Recompute ``gold_fraud_rates`` if silver transactions or labels have a version it has not read."""
    started = time.perf_counter()
    spec = GOLD_FRAUD_RATES
    versions = {}
    for source in (SILVER_TRANSACTIONS, SILVER_LABELS):
        version = _version(lake, source)
        if version is None:
            return GoldResult(spec.name, False, 0, 0, time.perf_counter() - started, f"skipped: {source} has no data yet")
        versions[source] = version
    gold = lake.find(spec.name)
    if gold is not None and all(gold.transaction_version(f"{spec.name}/{s}") == v for s, v in versions.items()):
        return GoldResult(spec.name, False, 0, 0, time.perf_counter() - started, "up to date")
    transactions = read_table(spark, lake, SILVER_TRANSACTIONS, versions[SILVER_TRANSACTIONS])
    labels = read_table(spark, lake, SILVER_LABELS, versions[SILVER_LABELS])
    rows = _arrow(_fraud_rates(transactions, labels), spec.schema)
    read = ", ".join(f"{source} v{version}" for source, version in versions.items())
    _overwrite(lake, spec, rows, [Transaction(f"{spec.name}/{s}", v) for s, v in versions.items()], {})
    transactions_in = sum(rows["transactions"].to_pylist())
    return GoldResult(spec.name, True, transactions_in, rows.num_rows, time.perf_counter() - started, f"recomputed from {read}")


BUILDERS: dict[str, Callable[[SparkSession, Lake], GoldResult]] = {
    GOLD_CARD_FEATURES.name: build_card_features,
    GOLD_DEVICE_HEALTH.name: build_device_health,
    GOLD_FRAUD_RATES.name: build_fraud_rates,
}


def build_gold(spark: SparkSession, lake: Lake, on_start: Callable[[str], None] | None = None) -> list[GoldResult]:
    """Bring every gold table up to date, calling ``on_start`` with each table's name as its build begins."""
    results = []
    for name, build in BUILDERS.items():
        if on_start is not None:
            on_start(name)
        results.append(build(spark, lake))
    return results


def _build_incremental(spark: SparkSession, lake: Lake, job: _Incremental) -> GoldResult:
    from pyspark.sql import functions as F

    started = time.perf_counter()
    name = job.spec.name

    def result(changed: bool, rows_in: int, rows_out: int, detail: str) -> GoldResult:
        return GoldResult(name, changed, rows_in, rows_out, time.perf_counter() - started, detail)

    version = _version(lake, job.source)
    if version is None:
        return result(False, 0, 0, f"skipped: {job.source} has no data yet")
    silver = job.prepare(read_table(spark, lake, job.source, version))
    gold = lake.find(job.spec.name)
    rebuild = gold is None or (job.feature_version is not None and gold.transaction_version(job.feature_version_app_id) != job.feature_version)
    heads = {(r["_topic"], r["_partition"]): r["head"] for r in silver.groupBy("_topic", "_partition").agg(F.max("_offset").alias("head")).collect()}
    done = {tp: None if rebuild or gold is None else gold.transaction_version(job.app_id(*tp)) for tp in heads}
    pending = {tp: head for tp, head in heads.items() if done[tp] is None or head > done[tp]}
    if not pending:
        return result(False, 0, 0, f"up to date with {job.source} v{version}")
    transactions = [Transaction(job.app_id(*tp), head) for tp, head in sorted(pending.items())]
    if job.feature_version is not None:
        transactions.append(Transaction(job.feature_version_app_id, job.feature_version))
    metadata = {"silver_version": str(version)} | ({} if job.feature_version is None else {"feature_version": str(job.feature_version)})
    new = silver.filter(_above(pending, done))
    rows_in = new.count()
    if rebuild or gold is None:  # (no gold table is always a rebuild)
        rows = _arrow(job.compute(silver), job.spec.schema)
        _overwrite(lake, job.spec, rows, transactions, metadata)
        return result(True, rows_in, rows.num_rows, f"built from {job.source} v{version}")
    touched = silver.join(new.select(*job.keys).distinct(), list(job.keys), "left_semi")
    rows = _arrow(job.compute(touched), job.spec.schema)
    predicate = " AND ".join(f"t.{column} = s.{column}" for column in job.merge_on)
    metrics = (
        gold.merge(
            rows, predicate, source_alias="s", target_alias="t",
            commit_properties=CommitProperties(app_transactions=transactions, custom_metadata={"job": JOB, **metadata}),
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    written = metrics["num_target_rows_inserted"] + metrics["num_target_rows_updated"]
    return result(True, rows_in, written, f"merged {rows.num_rows:,} recomputed rows from {job.source} v{version}")


def _above(pending: dict[tuple[str, int], int], done: dict[tuple[str, int], int | None]) -> Column:
    """Silver rows of the pending topic-partitions above the offsets already processed."""
    from pyspark.sql import functions as F

    condition = F.lit(False)
    for (topic, partition) in pending:
        here = (F.col("_topic") == topic) & (F.col("_partition") == partition)
        after = done[(topic, partition)]
        condition = condition | (here if after is None else here & (F.col("_offset") > after))
    return condition


def _version(lake: Lake, name: str) -> int | None:
    """A table's latest version; None if nothing has written it."""
    table = lake.find(name)
    return None if table is None else table.version()


def _arrow(frame: DataFrame, schema: pa.Schema) -> pa.Table:
    """A Spark result as an Arrow table of exactly ``schema``."""
    return frame.toArrow().select(schema.names).cast(schema)


def _overwrite(lake: Lake, spec: TableSpec, rows: pa.Table, transactions: list[Transaction], metadata: dict[str, str]) -> None:
    write_deltalake(
        lake.uri(spec), rows, mode="overwrite", schema_mode="overwrite", partition_by=list(spec.partition_by),
        name=spec.name, description=spec.description, storage_options=lake.storage_options,
        commit_properties=CommitProperties(app_transactions=transactions, custom_metadata={"job": JOB, **metadata}),
    )


def _card_features(transactions: DataFrame) -> DataFrame:
    """``gold_card_features``' rows: every transaction with its card features (``features.batch``), from all of its card's transactions."""
    return with_card_features(transactions).select(*GOLD_CARD_FEATURES.schema.names)


def _with_minute(readings: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return readings.withColumn("minute", F.date_trunc("minute", "event_time"))


def _device_health(readings: DataFrame) -> DataFrame:
    """Per device, sensor, metric and minute: count, mean, min, max and anomaly rate of the readings' values."""
    from pyspark.sql import functions as F

    values = readings.select("device_id", "sensor", "minute", "anomaly", F.explode("values").alias("metric", "value"))
    return (
        values.groupBy("device_id", "sensor", "metric", "minute")
        .agg(
            F.count(F.lit(1)).alias("readings"),
            F.avg("value").alias("mean"),
            F.min("value").alias("min"),
            F.max("value").alias("max"),
            F.avg(F.col("anomaly").cast("double")).alias("anomaly_rate"),  # nulls are left out; all null gives null
        )
        .withColumn("event_date", F.to_date("minute"))
    )


def _fraud_rates(transactions: DataFrame, labels: DataFrame) -> DataFrame:
    """Per transaction date and merchant category: counts and amounts by each transaction's latest label.

    The latest label has the latest ``event_time``; among equal ones, the one ingested last.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest = Window.partitionBy("transaction_id").orderBy(
        F.desc("event_time"), F.desc("_ingest_time"), F.desc("_partition"), F.desc("_offset")
    )
    latest = (
        labels.withColumn("rank", F.row_number().over(newest))
        .filter("rank = 1")
        .select(F.col("transaction_id").alias("event_id"), "is_fraud")
    )
    fraud = F.coalesce(F.col("is_fraud"), F.lit(False))
    return (
        transactions.join(latest, "event_id", "left")
        .groupBy("event_date", "merchant_category")
        .agg(
            F.count(F.lit(1)).alias("transactions"),
            F.count("is_fraud").alias("labelled"),
            F.count(F.when(fraud, 1)).alias("frauds"),
            F.sum("amount").alias("amount"),
            F.coalesce(F.sum(F.when(fraud, F.col("amount"))), F.lit(0.0)).alias("fraud_amount"),
        )
        .withColumn("fraud_rate", F.when(F.col("labelled") > 0, F.col("frauds") / F.col("labelled")))
    )


_CARD_FEATURES = _Incremental(
    GOLD_CARD_FEATURES, SILVER_TRANSACTIONS, ("card_id",), lambda rows: rows, _card_features,
    ("event_date", "event_id"), FEATURE_VERSION,
)
_DEVICE_HEALTH = _Incremental(
    GOLD_DEVICE_HEALTH, SILVER_READINGS, ("device_id", "minute"), _with_minute, _device_health,
    ("event_date", "device_id", "sensor", "metric", "minute"),
)
