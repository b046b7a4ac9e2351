"""Gold tables computed by Spark from silver snapshots and committed exactly once (``spark_writes``:
by delta-spark from the executors, or by deltalake where the session lacks delta-spark).

Each gold commit records what it processed as an app transaction in its own Delta log,
like the ingester's offsets:

- ``gold_card_features`` and ``gold_device_health`` record the silver version they cover
  (app id ``<gold>/<silver>``; the card features' also names their ``FEATURE_VERSION``,
  so a table built with other definitions is rebuilt from scratch). A run takes the silver
  rows above the offsets each topic-partition had at that version, recomputes every card
  (or device minute) they touch from the whole of silver, so late events also correct later
  rows, and upserts the result in one merge commit. A run that dies before committing is
  simply redone; no new silver rows means no commit; a silver version that can no longer be
  read (vacuumed) means a rebuild.
- ``gold_fraud_rates`` is small and late labels change old days, so it is recomputed
  whole and overwritten, recording the silver versions it read in its commit's metadata;
  it is skipped while neither silver table has a new version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from deltalake import Transaction
from deltalake.exceptions import DeltaError

from edgelake.contracts import FraudLabel, IoTReading
from edgelake.contracts import Transaction as CardTransaction
from edgelake.lake.catalog import Lake, commit_info
from edgelake.lake.features.batch import with_card_features
from edgelake.lake.features.definitions import FEATURE_VERSION
from edgelake.lake.spark import read_table
from edgelake.lake.spark_writes import Commit, merge_rows, replace_rows
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

    @property
    def app_id(self) -> str:
        """The app transaction recording the silver version the table covers (built with these definitions)."""
        built_with = "" if self.feature_version is None else f"@features-v{self.feature_version}"
        return f"{self.spec.name}/{self.source}{built_with}"

    def info(self, silver_version: int) -> dict[str, str]:
        versions = {"silver_version": str(silver_version)}
        return {"job": JOB, **versions} | ({} if self.feature_version is None else {"feature_version": str(self.feature_version)})


def build_card_features(spark: SparkSession, lake: Lake) -> GoldResult:
    """Bring ``gold_card_features`` up to date with silver transactions."""
    return _build_incremental(spark, lake, _CARD_FEATURES)


def has_card_features(table: DeltaTable, feature_version: int = FEATURE_VERSION) -> bool:
    """Whether a ``gold_card_features`` table was built with the card features of ``feature_version``.

    (Feature versions only go up: a table rebuilt with newer definitions still records the older app id.)
    """
    return table.transaction_version(replace(_CARD_FEATURES, feature_version=feature_version).app_id) is not None


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
        versions[source] = str(version)
    gold = lake.find(spec.name)
    if gold is not None and all(commit_info(gold.history(1)[0]).get(s) == v for s, v in versions.items()):
        return GoldResult(spec.name, False, 0, 0, time.perf_counter() - started, "up to date")
    transactions = read_table(spark, lake, SILVER_TRANSACTIONS, int(versions[SILVER_TRANSACTIONS]))
    labels = read_table(spark, lake, SILVER_LABELS, int(versions[SILVER_LABELS]))
    rates = _fraud_rates(transactions, labels).cache()
    try:
        transactions_in = rates.agg({"transactions": "sum"}).first()[0] or 0  # type: ignore[index]
        written = replace_rows(spark, lake, spec, rates, Commit(info={"job": JOB, **versions}))
    finally:
        rates.unpersist()
    read = ", ".join(f"{source} v{version}" for source, version in versions.items())
    return GoldResult(spec.name, True, int(transactions_in), written, time.perf_counter() - started, f"recomputed from {read}")


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
    started = time.perf_counter()

    def result(changed: bool, rows_in: int, rows_out: int, detail: str) -> GoldResult:
        return GoldResult(job.spec.name, changed, rows_in, rows_out, time.perf_counter() - started, detail)

    version = _version(lake, job.source)
    if version is None:
        return result(False, 0, 0, f"skipped: {job.source} has no data yet")
    gold = lake.find(job.spec.name)
    done = None if gold is None else gold.transaction_version(job.app_id)
    if done is not None and done >= version:
        return result(False, 0, 0, f"up to date with {job.source} v{version}")
    commit = Commit(Transaction(job.app_id, version), job.info(version))
    silver = job.prepare(read_table(spark, lake, job.source, version))
    heads = None if done is None else _heads(spark, lake, job.source, done)
    if heads is None:  # (nothing built yet, other definitions, or the covered version is gone)
        written = replace_rows(spark, lake, job.spec, job.compute(silver), commit)
        return result(True, lake.open(job.source, version).count(), written, f"built from {job.source} v{version}")
    new = silver.filter(_above(heads))
    rows_in = new.count()
    if rows_in == 0:
        return result(False, 0, 0, f"up to date with {job.source} v{version}: no new rows since v{done}")
    touched = silver.join(new.select(*job.keys).distinct(), list(job.keys), "left_semi")
    written = merge_rows(spark, lake, job.spec, job.compute(touched), job.merge_on, commit)
    return result(True, rows_in, written, f"merged the recomputed rows of {rows_in:,} new rows from {job.source} v{version}")


def _heads(spark: SparkSession, lake: Lake, source: str, version: int) -> dict[tuple[str, int], int] | None:
    """The highest offset of each silver topic-partition at ``version``; None if that version can no longer be read."""
    from pyspark.sql import functions as F

    try:
        silver = read_table(spark, lake, source, version)
    except DeltaError:
        return None
    heads = silver.groupBy("_topic", "_partition").agg(F.max("_offset").alias("head")).collect()
    return {(row["_topic"], row["_partition"]): row["head"] for row in heads}


def _above(heads: dict[tuple[str, int], int]) -> Column:
    """Silver rows above the ``heads`` of their topic-partitions (every row of a topic-partition without one)."""
    from pyspark.sql import functions as F

    covered = F.lit(False)
    for (topic, partition), head in heads.items():
        covered = covered | ((F.col("_topic") == topic) & (F.col("_partition") == partition) & (F.col("_offset") <= head))
    return ~covered


def _version(lake: Lake, name: str) -> int | None:
    """A table's latest version; None if nothing has written it."""
    table = lake.find(name)
    return None if table is None else table.version()


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
