"""deltalake and delta-spark share every catalog table: what one engine writes, the other reads and extends,
on disk and on object storage (moto through s3a).

For each table: deltalake creates it and commits rows, Spark (``format("delta")``) reads the same schema, rows
and version and appends; deltalake and ``edgelake sql`` read Spark's commit, and the ingester's commits are
in Spark's ``DESCRIBE HISTORY``. A MERGE by Spark, checkpoints written by either engine and the protocol
each side leaves stay readable (and writable) by the other.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from edgelake.contracts import Transaction
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.kafka import EventProducer
from edgelake.lake.catalog import Lake, history
from edgelake.lake.spark import has_delta, has_filesystem, read_table
from edgelake.lake.sql import run_query
from edgelake.lake.tables import CATALOG, SILVER, TableSpec
from edgelake.settings import Settings

ROWS = 6


def sample_rows(spec: TableSpec, first: int, count: int = ROWS) -> pa.Table:
    """``count`` rows valid for the table's schema, numbered from ``first``; every column varies with the row."""
    numbers = range(first, first + count)
    return pa.table({f.name: pa.array([_value(f.type, n) for n in numbers], f.type) for f in spec.schema}, schema=spec.schema)


def _value(kind: pa.DataType, n: int) -> Any:
    if pa.types.is_string(kind):
        return f"v{n}"
    if pa.types.is_binary(kind):
        return b"b%d" % n
    if pa.types.is_boolean(kind):
        return n % 2 == 0
    if pa.types.is_integer(kind):
        return n
    if pa.types.is_floating(kind):
        return n / 4
    if pa.types.is_timestamp(kind):
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n)
    if pa.types.is_date(kind):
        return date(2026, 1, 1) + timedelta(days=n % 3)
    if pa.types.is_map(kind):
        return [("m", _value(kind.item_type, n))]
    raise TypeError(f"no sample value of {kind}")


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as sorted JSON lines, so the two engines' Python values compare (maps as sorted pairs, times in UTC)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return sorted(value.items())
        if isinstance(value, list):
            return sorted(tuple(item) for item in value)
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        if isinstance(value, bytes | bytearray):
            return value.hex()
        return value

    return sorted(json.dumps({k: plain(v) for k, v in row.items()}, default=str, sort_keys=True) for row in rows)


def spark_rows(frame) -> list[str]:
    return canonical([row.asDict() for row in frame.collect()])


def spark_history(spark, lake: Lake, name: str) -> list[tuple[int, str]]:
    described = spark.sql(f"DESCRIBE HISTORY delta.`{lake.open(name).table_uri}`").select("version", "operation").collect()
    return [(row["version"], row["operation"]) for row in described]


# On object storage, one table of each kind: the same engines and code paths as the rest, at a fifth of the time.
ON_S3 = ("bronze_transactions", "silver_iot_readings", "quarantine", "quarantine_replays", "gold_card_features")
EVERY_TABLE = [("local", name) for name in sorted(CATALOG)] + [("s3", name) for name in ON_S3]


def new_lake(storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if storage == "s3":
        return Lake(request.getfixturevalue("object_store").new_lake())
    return Lake(str(tmp_path / "lake"))


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    return new_lake(request.param, request, tmp_path)


def test_the_session_has_delta_spark_and_s3a(spark, lake: Lake) -> None:
    assert has_delta(spark)
    assert has_filesystem(spark, lake.root)


@pytest.mark.parametrize(("storage", "name"), EVERY_TABLE)
def test_each_engine_reads_and_extends_what_the_other_wrote(spark, storage: str, name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    lake, spec = new_lake(storage, request, tmp_path), CATALOG[name]
    first = sample_rows(spec, 0)
    write_deltalake(lake.uri(spec), first, partition_by=list(spec.partition_by) or None, storage_options=lake.storage_options)

    # Spark reads deltalake's commit: the schema, the rows, the version
    frame = read_table(spark, lake, name)
    assert frame.columns == spec.schema.names
    assert spark_rows(frame) == canonical(first.to_pylist())
    assert spark_history(spark, lake, name)[0][0] == lake.open(name).version() == 0

    # deltalake and edgelake sql read Spark's append, with the table's schema unchanged
    second = sample_rows(spec, ROWS)
    spark.createDataFrame(second, schema=frame.schema).write.format("delta").mode("append").save(lake.uri(spec))
    table = lake.open(name)
    assert table.version() == 1 and pa.schema(table.schema().to_arrow()) == spec.schema
    both = pa.concat_tables([first, second])
    assert canonical(table.to_pyarrow_table().to_pylist()) == canonical(both.to_pylist())
    assert run_query(lake, f"SELECT COUNT(*) AS n FROM {name}").table.to_pylist() == [{"n": 2 * ROWS}]

    # and deltalake extends Spark's table; Spark time-travels over all three versions
    write_deltalake(lake.uri(spec), sample_rows(spec, 2 * ROWS), mode="append", storage_options=lake.storage_options)
    assert [read_table(spark, lake, name, version).count() for version in (0, 2)] == [ROWS, 3 * ROWS]


def test_spark_merges_and_checkpoints_stay_readable_by_deltalake(spark, lake: Lake) -> None:
    spec = CATALOG["gold_fraud_rates"]
    uri = lake.uri(spec)
    write_deltalake(uri, sample_rows(spec, 0), storage_options=lake.storage_options)
    changes = spark.createDataFrame(sample_rows(spec, ROWS // 2), read_table(spark, lake, spec.name).schema)
    changes.createOrReplaceTempView("changes")
    spark.sql(
        f"MERGE INTO delta.`{uri}` t USING changes s ON t.event_date = s.event_date AND t.merchant_category = s.merchant_category "
        "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
    )
    assert history(lake, spec.name, 1)[0]["operation"] == "MERGE"
    merged = run_query(lake, f"SELECT merchant_category FROM {spec.name} ORDER BY merchant_category").table.to_pylist()
    assert [row["merchant_category"] for row in merged] == [f"v{n}" for n in sorted(range(ROWS + ROWS // 2), key=str)]

    # Spark's checkpoint (every 10th commit by default), then one of deltalake's, each read by the other engine
    for n in range(10):
        spark.createDataFrame(sample_rows(spec, 100 + n, 1), changes.schema).write.format("delta").mode("append").save(uri)
    table = lake.open(spec.name)
    assert table.version() == 11 and table.count() == ROWS + ROWS // 2 + 10
    write_deltalake(uri, sample_rows(spec, 200, 1), mode="append", storage_options=lake.storage_options)
    lake.open(spec.name).create_checkpoint()
    assert read_table(spark, lake, spec.name).count() == ROWS + ROWS // 2 + 11

    # each protocol the engines left is one the other reads and writes
    protocol = lake.open(spec.name).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) <= (3, 7)
    assert not set(protocol.reader_features or []) - {"timestampNtz", "deletionVectors", "columnMapping", "v2Checkpoint"}


def test_the_ingesters_commits_are_in_sparks_history(spark, settings: Settings) -> None:
    events = list(transactions(SyntheticConfig(seed=8), 300))
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        producer.send_many(events)
    assert ingest(settings, IngestOptions(topics=(Transaction.topic,), max_events=100), once=True).batches >= 3
    lake = Lake.from_settings(settings)
    name = SILVER[Transaction.topic].name
    ours = [(commit["version"], commit["operation"]) for commit in history(lake, name)]
    assert len(ours) >= 3 and spark_history(spark, lake, name) == ours
    assert read_table(spark, lake, name).count() == len(events)
    by_id = read_table(spark, lake, name).groupBy("event_id").count()
    assert by_id.where("count > 1").count() == 0

