"""SQL speed: the guarded embedded engine against Spark SQL, on the same silver tables."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from edgelake.contracts import Event, FraudLabel, Transaction
from ingest.columnar import ColumnarContract
from ingest.sources.synthetic import SyntheticConfig, labels, transactions
from lake.spark import read_table, spark_session
from lake.sql import run_query
from lake.tables import SILVER, table_uri

QUERIES = {
    "aggregate": """
        SELECT merchant_category, count(*) AS transactions, sum(amount) AS amount, avg(amount) AS mean_amount
        FROM silver_transactions GROUP BY merchant_category ORDER BY merchant_category""",
    "join": """
        SELECT t.merchant_category, count(*) AS labelled, sum(CASE WHEN l.is_fraud THEN 1 ELSE 0 END) AS frauds
        FROM silver_transactions t JOIN silver_fraud_labels l ON l.transaction_id = t.event_id
        GROUP BY t.merchant_category ORDER BY t.merchant_category""",
    "window": """
        WITH daily AS (
            SELECT event_date, card_id, sum(amount) AS spent FROM silver_transactions GROUP BY event_date, card_id
        )
        SELECT event_date, card_id, spent FROM (
            SELECT event_date, card_id, spent, rank() OVER (PARTITION BY event_date ORDER BY spent DESC, card_id) AS place
            FROM daily
        ) ranked WHERE place <= 3 ORDER BY event_date, place""",
}
BATCH = 100_000


def run(rows: int, repeats: int = 5, master: str = "local[*]") -> dict[str, Any]:
    """Write ``rows`` synthetic transactions and their labels as silver, then time every query on both engines."""
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-sql-") as scratch:
        lake_root = str(Path(scratch) / "lake")
        config = SyntheticConfig(seed=11, cards=max(2000, rows // 50))
        _write_silver(lake_root, Transaction, transactions(config, rows))
        _write_silver(lake_root, FraudLabel, labels(config, rows))
        spark = spark_session(master, "edgelake-bench-sql")
        try:
            for name in ("silver_transactions", "silver_fraud_labels"):
                read_table(spark, lake_root, name).createOrReplaceTempView(name)
            queries = [_compare(name, sql, lake_root, spark, repeats) for name, sql in QUERIES.items()]
        finally:
            spark.stop()
    embedded = statistics.median(t for q in queries for t in q.pop("embedded_s"))
    on_spark = statistics.median(t for q in queries for t in q.pop("spark_s"))
    return {
        "rows": rows,
        "queries": queries,
        "embedded_p50_s": round(embedded, 4),
        "spark_p50_s": round(on_spark, 4),
        "ratio": round(on_spark / embedded, 2),
    }


def _compare(name: str, sql: str, lake_root: str, spark: Any, repeats: int) -> dict[str, Any]:
    """Both engines' timings of one query (after a warm-up each), having checked they give the same answer."""
    embedded = run_query(lake_root, sql, limit=1_000_000).table
    on_spark = spark.sql(sql).toArrow()
    _check_same(name, embedded, on_spark)
    embedded_s = _timed(lambda: run_query(lake_root, sql, limit=1_000_000), repeats)
    spark_s = _timed(lambda: spark.sql(sql).toArrow(), repeats)
    return {
        "name": name,
        "result_rows": embedded.num_rows,
        "embedded_p50_s": round(statistics.median(embedded_s), 4),
        "spark_p50_s": round(statistics.median(spark_s), 4),
        "embedded_s": embedded_s,
        "spark_s": spark_s,
    }


def _timed(call: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def _check_same(name: str, embedded: pa.Table, on_spark: pa.Table) -> None:
    left, right = embedded.to_pandas(), on_spark.to_pandas()
    right.columns = left.columns
    numbers = left.select_dtypes("number").columns
    same_shape = left.shape == right.shape
    same_values = same_shape and all(
        (abs(left[c] - right[c]) <= 1e-6 * abs(left[c]).clip(lower=1)).all() if c in numbers else left[c].astype(str).equals(right[c].astype(str))
        for c in left.columns
    )
    if not same_values:
        raise RuntimeError(f"query '{name}': the embedded engine and Spark SQL disagree")


def _write_silver(lake_root: str, event_type: type[Event], events: Any) -> None:
    """Events as silver rows, converted by ingest's own columnar fast lane, in batches."""
    contract = ColumnarContract(event_type)
    spec = SILVER[event_type.topic]
    now = datetime.now(UTC)
    offset = 0
    while batch := [event.to_bytes() for event in islice(events, BATCH)]:
        accepted = contract.accept(batch, now)
        if accepted.rest:
            raise RuntimeError(f"{len(accepted.rest)} generated {event_type.__name__} events were not accepted")
        write_deltalake(
            table_uri(lake_root, spec), _with_lineage(accepted.table, spec.schema, event_type.topic, offset, now),
            mode="append", partition_by=list(spec.partition_by),
        )  # fmt: skip
        offset += len(batch)


def _with_lineage(table: pa.Table, schema: pa.Schema, topic: str, first_offset: int, now: datetime) -> pa.Table:
    rows = table.num_rows
    lineage = {
        "_topic": pa.array([topic] * rows),
        "_partition": pa.array([0] * rows, pa.int32()),
        "_offset": pa.array(range(first_offset, first_offset + rows), pa.int64()),
        "_ingest_time": pa.array([now] * rows, schema.field("_ingest_time").type),
    }
    for name, values in lineage.items():
        table = table.append_column(name, values)
    return table.select(schema.names).cast(schema)
