"""SQL speed: the guarded embedded engine against Spark SQL, on the same silver tables."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from edgelake.bench.silver import write_silver
from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions
from edgelake.lake.catalog import Lake
from edgelake.lake.spark import read_table, spark_session
from edgelake.lake.sql import run_query

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

def run(rows: int, repeats: int = 5, master: str = "local[*]") -> dict[str, Any]:
    """Write ``rows`` synthetic transactions and their labels as silver, then time every query on both engines."""
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-sql-") as scratch:
        lake = Lake(str(Path(scratch) / "lake"))
        config = SyntheticConfig(seed=11, cards=max(2000, rows // 50))
        write_silver(lake, transactions(config, rows))
        write_silver(lake, labels(config, rows))
        spark = spark_session(master, "edgelake-bench-sql")
        try:
            for name in ("silver_transactions", "silver_fraud_labels"):
                read_table(spark, lake, name).createOrReplaceTempView(name)
            queries = [_compare(name, sql, lake, spark, repeats) for name, sql in QUERIES.items()]
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


def _compare(name: str, sql: str, lake: Lake, spark: Any, repeats: int) -> dict[str, Any]:
    """Both engines' timings of one query (after a warm-up each), having checked they give the same answer."""
    embedded = run_query(lake, sql, limit=1_000_000).table
    on_spark = spark.sql(sql).toArrow()
    _check_same(name, embedded, on_spark)
    embedded_s = _timed(lambda: run_query(lake, sql, limit=1_000_000), repeats)
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
