"""Spark reads of catalog tables: consistent snapshots by name and version, partition and evolved columns kept;
through delta-spark (the tests' session), and through file lists and deltalake in a plain Spark session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import write_deltalake

from edgelake.lake import catalog
from edgelake.lake.catalog import Lake
from edgelake.lake.spark import has_delta, has_filesystem, read_table
from edgelake.lake.tables import QUARANTINE, table_uri
from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions
from edgelake.lake.gold import build_gold
from edgelake.lake.tables import GOLD
from support import append_silver, quarantine_rows

# A plain Spark session (no delta-spark, no hadoop-aws: a bare ``pip install pyspark``) reading the quarantine
# at each version and building gold, whose commits then go through deltalake on the driver.
PLAIN_SPARK = """
import json, sys
from edgelake.lake.catalog import Lake
from edgelake.lake.gold import build_gold
from edgelake.lake.spark import has_delta, has_filesystem, read_table, spark_session
lake_root, gold_root = sys.argv[1:]
spark = spark_session("local[2]", "edgelake-plain-spark", shuffle_partitions=2)
assert not has_delta(spark)
offsets = {v: sorted(r["offset"] for r in read_table(spark, Lake(lake_root), "quarantine", v).collect()) for v in (0, 2)}
built = [r.table for r in build_gold(spark, Lake(gold_root)) if r.changed]
print(json.dumps({"filesystem": has_filesystem(spark, lake_root), "offsets": offsets, "built": built}))
"""


@pytest.fixture(params=["local", "s3"])
def lake_root(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Quarantine at version 0 (10 rows), 1 (a new column), 2 (compacted: the folder keeps removed files);
    on disk, and copied to object storage (s3a with hadoop-aws; a plain Spark session has no filesystem for it)."""
    root = str(tmp_path / "lake")
    uri = table_uri(root, QUARANTINE)
    write_deltalake(uri, quarantine_rows(0, 10), partition_by=["ingest_date"])
    write_deltalake(uri, quarantine_rows(10, 5, note="x"), mode="append", schema_mode="merge")
    catalog.optimize(Lake(root), "quarantine")
    return request.getfixturevalue("object_store").copy_lake(root) if request.param == "s3" else root


def rows(frame) -> list[tuple]:
    return sorted((r["offset"], r["ingest_date"], r["note"] if "note" in r else None) for r in frame.collect())


def test_read_table_is_the_current_snapshot_with_partition_and_evolved_columns(spark, lake_root: str) -> None:
    assert has_delta(spark) and has_filesystem(spark, lake_root)
    frame = read_table(spark, Lake(lake_root), "quarantine")
    reference = Lake(lake_root).open("quarantine").to_pyarrow_table()
    assert frame.columns == reference.column_names
    expected = sorted(zip(reference["offset"].to_pylist(), reference["ingest_date"].to_pylist(), reference["note"].to_pylist(), strict=True))
    assert rows(frame) == expected
    assert len(expected) == 15


def test_read_table_travels_to_an_older_version(spark, lake_root: str) -> None:
    frame = read_table(spark, Lake(lake_root), "quarantine", version=0)
    assert [r[0] for r in rows(frame)] == list(range(10))
    assert "note" not in frame.columns


def test_a_plain_spark_session_reads_file_lists_and_commits_gold_through_deltalake(spark, lake_root: str, tmp_path: Path) -> None:
    config = SyntheticConfig(seed=3, cards=40)
    lakes = {engine: str(tmp_path / engine) for engine in ("plain", "delta-spark")}
    for root in lakes.values():
        append_silver(root, list(transactions(config, 400)))
        append_silver(root, list(labels(config, 300)))
    plain = subprocess.run([sys.executable, "-c", PLAIN_SPARK, lake_root, lakes["plain"]], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    seen = json.loads(plain.stdout.strip().splitlines()[-1])
    assert seen["filesystem"] == (not lake_root.startswith("s3://"))  # there: the snapshot is read by deltalake, on the driver
    assert seen["offsets"] == {"0": list(range(10)), "2": list(range(15))}
    assert seen["built"] == ["gold_card_features", "gold_fraud_rates"]

    build_gold(spark, Lake(lakes["delta-spark"]))
    for name in seen["built"]:
        by_engine = [Lake(root).open(name) for root in lakes.values()]
        assert "delta-rs" in by_engine[0].history(1)[0]["clientVersion"] and "Delta-Lake" in by_engine[1].history(1)[0]["engineInfo"]
        plain_rows, spark_rows = (sorted(map(str, t.to_pyarrow_table().to_pylist())) for t in by_engine)
        assert plain_rows == spark_rows and len(plain_rows) > 0
        assert by_engine[0].schema() == by_engine[1].schema() and GOLD[name].schema.names == by_engine[0].schema().to_arrow().names
