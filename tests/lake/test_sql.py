"""Guarded SQL over real Delta tables: hostile statements refused without touching the lake, analytical
queries answered right, time travel, the row limit, the timeout, and the ``edgelake sql`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from edgelake.lake.catalog import Lake, UnknownTable
from edgelake.lake.sql import QueryFailed, QueryTimeout, RefusedStatement, check_statement, json_rows, run_query
from edgelake.lake.tables import SILVER, table_uri

TRANSACTIONS, LABELS = SILVER["transactions"], SILVER["fraud-labels"]
FIRST, MORE = 240, 60  # transactions in version 0, and appended as version 1
START = datetime(2026, 3, 1, tzinfo=UTC)
PWNED = f"/tmp/edgelake-sql-pwned-{uuid.uuid4().hex[:8]}"  # a file no statement may create


def transactions(first: int, count: int) -> pa.Table:
    rows = []
    for i in range(first, first + count):
        at = START + timedelta(minutes=53 * i)
        rows.append({
            "event_id": f"t{i:04d}", "event_time": at, "schema_version": 1, "card_id": f"card-{i % 11}",
            "merchant_id": f"m{i % 17}", "merchant_category": ("grocery", "fuel", "travel", "online")[i % 4],
            "amount": round((i * 7919) % 1000 / 3, 2), "currency": "EUR", "country": None if i % 5 == 0 else "BE",
            "channel": "pos", "terminal_id": None, "attributes": {"risk": i / 1000},
            "_topic": "transactions", "_partition": i % 4, "_offset": i, "_ingest_time": at, "event_date": at.date(),
        })
    return pa.Table.from_pylist(rows, TRANSACTIONS.schema)


def labels() -> pa.Table:
    rows = [
        {
            "event_id": f"l{i:04d}", "event_time": START + timedelta(days=30), "schema_version": 1,
            "transaction_id": f"t{i:04d}", "card_id": f"card-{i % 11}", "is_fraud": i % 9 == 0, "source": "chargeback",
            "_topic": "fraud-labels", "_partition": 0, "_offset": i, "_ingest_time": START, "event_date": date(2026, 3, 31),
        }
        for i in range(0, FIRST + MORE, 3)
    ]
    return pa.Table.from_pylist(rows, LABELS.schema)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Lake:
    """Silver transactions in two versions (240 rows, then 300) and one version of labels for every third one;
    on disk, or (parametrized ``s3``) copied to object storage."""
    root = str(tmp_path_factory.mktemp("sql") / "lake")
    write_deltalake(table_uri(root, TRANSACTIONS), transactions(0, FIRST), partition_by=["event_date"])
    write_deltalake(table_uri(root, TRANSACTIONS), transactions(FIRST, MORE), mode="append")
    write_deltalake(table_uri(root, LABELS), labels(), partition_by=["event_date"])
    if getattr(request, "param", "local") == "s3":
        return Lake(request.getfixturevalue("object_store").copy_lake(root))
    return Lake(root)


BOTH_STORAGES = pytest.mark.parametrize("lake", ["local", "s3"], indirect=True)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest transactions and the labels, for computing the expected answers."""
    return transactions(0, FIRST + MORE).to_pandas(), labels().to_pandas()


def lake_state(root: str) -> dict[str, object]:
    files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in Path(root).rglob("*") if p.is_file())
    versions = {name: DeltaTable(table_uri(root, spec)).version() for name, spec in (("t", TRANSACTIONS), ("l", LABELS))}
    return {"files": files, "versions": versions, "pwned": os.path.exists(PWNED)}


# (statement, a fragment of the reason it is refused)
HOSTILE = [
    ("CREATE TABLE stolen AS SELECT * FROM silver_transactions", "not CREATE"),
    ("DROP TABLE silver_transactions", "not DROP"),
    ("ALTER TABLE silver_transactions ADD COLUMN x INT", "not ALTER"),
    ("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'", "not CREATE"),
    ("CREATE VIEW v AS SELECT * FROM silver_transactions", "not CREATE"),
    ("INSERT INTO silver_transactions SELECT * FROM silver_transactions", "not INSERT"),
    ("UPDATE silver_transactions SET amount = 0", "not UPDATE"),
    ("DELETE FROM silver_transactions", "not DELETE"),
    ("MERGE INTO silver_transactions t USING silver_fraud_labels l ON t.event_id = l.transaction_id WHEN MATCHED THEN DELETE", "not MERGE"),
    ("TRUNCATE silver_transactions", "not TRUNCATE"),
    ("WITH x AS (SELECT 1) INSERT INTO silver_transactions SELECT * FROM x", "not INSERT"),
    ("SELECT 1; DROP TABLE silver_transactions", "one statement at a time"),
    ("SELECT 1 /* ; */; DELETE FROM silver_transactions", "one statement at a time"),
    ("SELECT 1 -- a comment\n; DROP TABLE silver_transactions", "one statement at a time"),
    ("BEGIN; DELETE FROM silver_transactions; COMMIT", "not BEGIN"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table functions cannot be used"),
    ("SELECT * FROM read_parquet('s3://bucket/lake/*.parquet')", "table functions cannot be used"),
    ("SELECT * FROM parquet_scan('/etc/passwd')", "table functions cannot be used"),
    ("SELECT * FROM read_json_auto('/etc/passwd')", "table functions cannot be used"),
    ("SELECT * FROM glob('/etc/*')", "cannot parse"),
    ("SELECT * FROM silver_transactions WHERE card_id = (SELECT max(file) FROM glob('/etc/*', '*'))", "table functions cannot be used"),
    ("SELECT * FROM generate_series(1, 1000000000)", "table functions cannot be used"),
    ("SELECT * FROM silver_transactions WHERE event_id IN (SELECT * FROM read_csv('/etc/passwd'))", "table functions cannot be used"),
    ("SELECT * FROM silver_transactions UNION ALL SELECT * FROM read_parquet('/etc/x')", "table functions cannot be used"),
    ("SELECT * FROM '/etc/passwd'", "looks like a file path or URL"),
    ('SELECT * FROM "s3://bucket/lake/silver/silver_transactions"', "looks like a file path or URL"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file() reads files"),
    ("SELECT length(read_text('/etc/passwd'))", "read_text() reads files"),
    ("SELECT lo_import('/etc/passwd')", "lo_import() reads files"),
    ("SELECT load_extension('/tmp/evil.so')", "load_extension() reads files"),
    ("SELECT pg_catalog.pg_ls_dir('/')", "pg_ls_dir() reads files"),
    (f"COPY (SELECT * FROM silver_transactions) TO '{PWNED}'", "not COPY"),
    (f"COPY silver_transactions TO '{PWNED}' (FORMAT csv)", "not COPY"),
    ("ATTACH 'evil.db' AS evil", "not ATTACH"),
    ("PRAGMA table_info('silver_transactions')", "not PRAGMA"),
    ("SET datafusion.execution.batch_size = 1", "not SET"),
    ("INSTALL httpfs", "not INSTALL"),
    ("LOAD httpfs", "not LOAD"),
    ("CALL evil()", "not CALL"),
    ("EXPLAIN ANALYZE SELECT * FROM silver_transactions", "not EXPLAIN"),
    ("SHOW TABLES", "not SHOW"),
    ("SELECT * INTO stolen FROM silver_transactions", "SELECT … INTO"),
    ("WITH gone AS (DELETE FROM silver_transactions RETURNING *) SELECT * FROM gone", "WITH gone holds a DELETE"),
    ("SELECT * FROM secrets", "no table 'secrets'; the catalog has"),
    ("SELECT * FROM SILVER_TRANSACTIONS", "no table 'SILVER_TRANSACTIONS'"),
    ("SELECT * FROM public.silver_transactions", "qualified name"),
    ("SELECT * FROM datafusion.information_schema.tables", "qualified name"),
    ("SELECT 1；DROP TABLE silver_transactions", "U+FF1B FULLWIDTH SEMICOLON"),
    ("DR\u200bOP TABLE silver_transactions", "U+200B ZERO WIDTH SPACE"),
    ("SELECT * FROM silver_tr\u0430nsactions", "U+0430 CYRILLIC SMALL LETTER A"),
    ("\u0405ELECT * FROM silver_transactions", "U+0405 CYRILLIC CAPITAL LETTER DZE"),
    ("SELECT * FROM silver_transactions \u202e; DROP TABLE x", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("SELECT 'harmless' \u2066; DROP TABLE silver_transactions", "U+2066 LEFT-TO-RIGHT ISOLATE"),
    ("SELECT\u00a0* FROM silver_transactions", "U+00A0 NO-BREAK SPACE"),
    ("SELECT x FROM (VALUES (1)) AS v(x)", "only catalog tables, CTEs and subqueries"),
    ("", "empty statement"),
    ("  -- nothing but a comment\n", "empty statement"),
    ("SELECT * FROM", "cannot parse"),
]


@pytest.mark.parametrize(("statement", "reason"), HOSTILE, ids=[f"{i:02d}" for i in range(len(HOSTILE))])
def test_hostile_statements_are_refused_without_touching_the_lake(lake: Lake, statement: str, reason: str) -> None:
    before = lake_state(lake.root)
    with pytest.raises(RefusedStatement) as refused:
        check_statement(statement)
    assert reason in str(refused.value)
    with pytest.raises(RefusedStatement):
        run_query(lake, statement)
    assert lake_state(lake.root) == before
    assert not before["pwned"]


@pytest.mark.parametrize("statement", ["SELECT * FROM glob('/*')", "SELECT glob('a')", "SELECT (1", "SELECT CAST(1 AS)"])
def test_refusals_speak_of_the_statement_not_the_parser(statement: str) -> None:
    with pytest.raises(RefusedStatement) as refused:
        check_statement(statement)
    message = str(refused.value)
    assert "sqlglot" not in message and "<class" not in message and "expressions" not in message, message
    assert "(line 1, column" in message, message


def test_the_statement_run_is_the_one_checked_not_the_raw_text(lake: Lake) -> None:
    # Postgres reads ^ as power and '\' as a plain backslash; DataFusion alone would read ^ as XOR.
    result = run_query(lake, r"SELECT 2 ^ 3 AS p, 'a\' AS s, 'it''s' AS q /* ; DROP TABLE x */ -- and; a comment")
    assert result.table.to_pylist() == [{"p": 8.0, "s": "a\\", "q": "it's"}]


def test_datafusion_spellings_survive_the_round_trip(lake: Lake, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    tx, _ = frames
    result = run_query(
        lake,
        "SELECT to_char(min(event_time), '%Y-%m-%d %H:%M') AS first, median(amount) AS middle, "
        "TRY_CAST('x' AS INT) AS nothing FROM silver_transactions",
    )
    assert result.table.to_pylist() == [
        {"first": tx.event_time.min().strftime("%Y-%m-%d %H:%M"), "middle": tx.amount.median(), "nothing": None}
    ]


def test_check_statement_names_the_catalog_tables_read_not_ctes() -> None:
    sql = """WITH fraud AS (SELECT transaction_id FROM silver_fraud_labels WHERE is_fraud)
             SELECT count(*) FROM silver_transactions t JOIN fraud f ON f.transaction_id = t.event_id"""
    assert check_statement(sql) == ["silver_fraud_labels", "silver_transactions"]
    assert check_statement("SELECT 1") == []


@BOTH_STORAGES
def test_aggregate_by_group(lake: Lake, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    tx, _ = frames
    result = run_query(
        lake,
        "SELECT merchant_category, count(*) AS n, sum(amount) AS total, avg(amount) AS mean "
        "FROM silver_transactions GROUP BY merchant_category ORDER BY merchant_category",
    )
    expected = tx.groupby("merchant_category").amount.agg(["count", "sum", "mean"]).reset_index()
    got = result.table.to_pandas()
    assert got.merchant_category.tolist() == expected.merchant_category.tolist()
    assert got.n.tolist() == expected["count"].tolist()
    assert got.total.round(6).tolist() == expected["sum"].round(6).tolist()
    assert got["mean"].round(6).tolist() == expected["mean"].round(6).tolist()
    assert result.tables == {"silver_transactions": 1}
    assert not result.truncated


@BOTH_STORAGES
def test_join_of_transactions_and_labels(lake: Lake, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    tx, lb = frames
    result = run_query(
        lake,
        """SELECT t.merchant_category, count(*) AS labelled, sum(CASE WHEN l.is_fraud THEN 1 ELSE 0 END) AS frauds
           FROM silver_transactions t JOIN silver_fraud_labels l ON l.transaction_id = t.event_id
           GROUP BY t.merchant_category ORDER BY t.merchant_category""",
    )
    joined = tx.merge(lb, left_on="event_id", right_on="transaction_id")
    expected = joined.groupby("merchant_category").is_fraud.agg(["count", "sum"]).reset_index()
    assert result.table.to_pydict() == {
        "merchant_category": expected.merchant_category.tolist(),
        "labelled": expected["count"].tolist(),
        "frauds": expected["sum"].tolist(),
    }
    assert result.tables == {"silver_fraud_labels": 0, "silver_transactions": 1}


@BOTH_STORAGES
def test_window_functions_rank_and_lag(lake: Lake, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    tx, _ = frames
    result = run_query(
        lake,
        """SELECT card_id, event_id, amount, previous FROM (
               SELECT card_id, event_id, amount,
                      rank() OVER (PARTITION BY card_id ORDER BY amount DESC, event_id) AS place,
                      lag(amount) OVER (PARTITION BY card_id ORDER BY event_time) AS previous
               FROM silver_transactions) ranked
           WHERE place = 1 ORDER BY card_id""",
    )
    ordered = tx.sort_values("event_time")
    ordered["previous"] = ordered.groupby("card_id").amount.shift()
    top = ordered.sort_values(["amount", "event_id"], ascending=[False, True]).groupby("card_id").head(1).sort_values("card_id")
    got = result.table.to_pandas()
    assert got.event_id.tolist() == top.event_id.tolist()
    assert got.previous.fillna(-1).tolist() == top.previous.fillna(-1).tolist()


def test_cte_with_date_and_timestamp_filters(lake: Lake, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    tx, _ = frames
    result = run_query(
        lake,
        """WITH daily AS (
               SELECT event_date, count(*) AS n, sum(amount) AS spent FROM silver_transactions
               WHERE event_time >= TIMESTAMP '2026-03-02 06:00:00+00' AND event_date < DATE '2026-03-08'
               GROUP BY event_date)
           SELECT event_date, n, spent FROM daily WHERE n > 5 ORDER BY event_date""",
    )
    window = tx[(tx.event_time >= pd.Timestamp("2026-03-02 06:00", tz="UTC")) & (tx.event_date < date(2026, 3, 8))]
    daily = window.groupby("event_date").amount.agg(["count", "sum"]).reset_index()
    daily = daily[daily["count"] > 5]
    got = result.table.to_pydict()
    assert got["event_date"] == daily.event_date.tolist()
    assert got["n"] == daily["count"].tolist()
    assert [round(x, 6) for x in got["spent"]] == daily["sum"].round(6).tolist()
    assert len(got["n"]) >= 4


def test_order_by_and_limit(lake: Lake, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    tx, _ = frames
    result = run_query(lake, "SELECT event_id, amount FROM silver_transactions ORDER BY amount DESC, event_id LIMIT 5")
    top = tx.sort_values(["amount", "event_id"], ascending=[False, True]).head(5)
    assert result.table.column("event_id").to_pylist() == top.event_id.tolist()
    assert not result.truncated


@BOTH_STORAGES
def test_time_travel_reads_an_older_version(lake: Lake) -> None:
    count = "SELECT count(*) AS n FROM silver_transactions"
    assert run_query(lake, count).table.to_pylist() == [{"n": FIRST + MORE}]
    old = run_query(lake, count, as_of=0)
    assert old.table.to_pylist() == [{"n": FIRST}]
    assert old.tables == {"silver_transactions": 0}
    join = "SELECT count(*) AS n FROM silver_transactions t JOIN silver_fraud_labels l ON l.transaction_id = t.event_id"
    with pytest.raises(RefusedStatement, match="table=version"):
        run_query(lake, join, as_of=0)
    both = run_query(lake, join, as_of={"silver_transactions": 0, "silver_fraud_labels": 0})
    assert both.table.to_pylist() == [{"n": FIRST // 3}]
    assert run_query(lake, join, as_of={"silver_transactions": 0}).tables == {"silver_fraud_labels": 0, "silver_transactions": 0}
    with pytest.raises(RefusedStatement, match="as_of names quarantine, which the query does not read"):
        run_query(lake, join, as_of={"quarantine": 0})
    with pytest.raises(UnknownTable, match="versions 0 to 1, not 7"):
        run_query(lake, count, as_of=7)


@BOTH_STORAGES
def test_row_limit_truncates_and_flags(lake: Lake) -> None:
    every = "SELECT * FROM silver_transactions"
    cut = run_query(lake, every, limit=50)
    assert (cut.table.num_rows, cut.truncated) == (50, True)
    assert cut.table.schema.names == TRANSACTIONS.schema.names
    exact = run_query(lake, every, limit=FIRST + MORE)
    assert (exact.table.num_rows, exact.truncated) == (FIRST + MORE, False)
    assert run_query(lake, every, limit=FIRST + MORE - 1).truncated


def test_wide_rows_are_cut_off_at_the_byte_limit(lake: Lake) -> None:
    # 300 rows of 50 KB each: 15 MB unbounded (the row cap alone let a 500 MB answer through)
    wide = "SELECT event_id, repeat('a', 50000) AS pad FROM silver_transactions"
    cut = run_query(lake, wide, max_bytes=1_000_000)
    assert cut.truncated and 0 < cut.table.num_rows <= 20, cut.table.num_rows
    whole = run_query(lake, wide, max_bytes=100_000_000)
    assert (whole.table.num_rows, whole.truncated) == (FIRST + MORE, False)


@pytest.mark.parametrize("terms", [250, 15_000])
def test_statements_nested_too_deep_for_the_engine_are_refused_quickly(lake: Lake, terms: int) -> None:
    # 15,000 terms overflowed DataFusion's stack and killed the process; 3,000 took 9 s to plan
    started = time.monotonic()
    with pytest.raises(RefusedStatement, match="nests deeper than 200 levels"):
        run_query(lake, "SELECT " + "+".join(["1"] * terms) + " AS s")
    assert time.monotonic() - started < 5
    assert run_query(lake, "SELECT " + "+".join(["1"] * 150) + " AS s").table.to_pylist() == [{"s": 150}]


def test_statements_with_too_many_parts_are_refused(lake: Lake) -> None:
    with pytest.raises(RefusedStatement, match="more than 20,000 parts"):
        run_query(lake, "SELECT " + ", ".join(f"{i} AS c{i}" for i in range(8_000)))


def test_a_slow_query_times_out_and_its_stream_stops(lake: Lake) -> None:
    # 300^4 = 8.1 billion rows, streamed batch by batch; the worker stops at the first batch past the deadline.
    sql = "SELECT a.amount FROM silver_transactions a, silver_transactions b, silver_transactions c, silver_transactions d"
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="timeout of 0.05 s"):
        run_query(lake, sql, limit=10**12, max_bytes=10**15, timeout_s=0.05)
    assert time.monotonic() - started < 2
    deadline = time.monotonic() + 5
    while any(thread.name == "edgelake-sql" for thread in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(thread.name == "edgelake-sql" for thread in threading.enumerate())


def test_engine_errors_are_query_failures_with_datafusions_message(lake: Lake) -> None:
    with pytest.raises(QueryFailed, match="No field named no_such_column"):
        run_query(lake, "SELECT no_such_column FROM silver_transactions")
    with pytest.raises(QueryFailed, match="Cannot cast string 'card-"):
        run_query(lake, "SELECT CAST(card_id AS INT) FROM silver_transactions")
    with pytest.raises(UnknownTable, match="has no data yet"):
        run_query(lake, "SELECT * FROM gold_fraud_rates")


def test_json_rows_are_json_safe() -> None:
    table = pa.table({
        "at": pa.array([datetime(2026, 3, 1, 12, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "day": [date(2026, 3, 1)], "x": [float("nan")], "raw": [b"\x00\xff"],
        "m": pa.array([[("risk", 0.5)]], pa.map_(pa.string(), pa.float64())), "dup": [1],
    }).append_column("dup", pa.array([2]))
    rows = json_rows(table)
    assert rows == [{
        "at": "2026-03-01T12:00:00+00:00", "day": "2026-03-01", "x": None, "raw": "AP8=", "m": {"risk": 0.5},
        "dup": 1, "dup_2": 2,
    }]
    json.dumps(rows, allow_nan=False)


def edgelake_sql(lake: Lake, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300", "EDGELAKE_LAKE_ROOT": lake.root}
    return subprocess.run([sys.executable, "-m", "edgelake", "sql", *args], capture_output=True, text=True, env=env, timeout=120)


@BOTH_STORAGES
def test_cli_json_output(lake: Lake) -> None:
    result = edgelake_sql(lake, "SELECT event_id, event_time, attributes FROM silver_transactions ORDER BY event_id LIMIT 2", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"event_id": "t0000", "event_time": "2026-03-01T00:00:00+00:00", "attributes": {"risk": 0.0}},
        {"event_id": "t0001", "event_time": "2026-03-01T00:53:00+00:00", "attributes": {"risk": 0.001}},
    ]


def test_cli_csv_output_time_travel_and_truncation(lake: Lake) -> None:
    result = edgelake_sql(
        lake, "SELECT count(*) AS n FROM silver_transactions", "--format", "csv", "--as-of", "silver_transactions=0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"n\n{FIRST}\n"
    cut = edgelake_sql(lake, "SELECT event_id FROM silver_transactions ORDER BY event_id", "--format", "csv", "--limit", "3")
    assert cut.stdout.splitlines() == ["event_id", "t0000", "t0001", "t0002"]
    assert "limit of 3" in cut.stderr


def test_cli_table_output_has_a_footer(lake: Lake) -> None:
    result = edgelake_sql(lake, "SELECT count(*) AS n FROM silver_transactions", "--as-of", "0")
    assert result.returncode == 0, result.stderr
    assert f"│ {FIRST} │" in result.stdout
    assert "1 row · tables read at versions silver_transactions@0 ·" in result.stderr


def test_cli_refuses_with_the_reason_and_exit_status_2(lake: Lake) -> None:
    refused = edgelake_sql(lake, "SELECT * FROM read_csv('/etc/passwd')")
    assert refused.returncode == 2
    assert "table functions cannot be used" in refused.stderr
    assert refused.stdout == ""
    failed = edgelake_sql(lake, "SELECT no_such_column FROM silver_transactions", "--format", "json")
    assert failed.returncode == 2
    assert "No field named no_such_column" in failed.stderr
