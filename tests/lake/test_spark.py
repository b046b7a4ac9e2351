"""Spark reads of catalog tables: consistent snapshots by name and version, partition and evolved columns kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import write_deltalake

from edgelake.lake import catalog
from edgelake.lake.catalog import Lake
from edgelake.lake.spark import has_delta, has_filesystem, read_table
from edgelake.lake.tables import QUARANTINE, table_uri
from support import quarantine_rows


@pytest.fixture(params=["local", "s3"])
def lake_root(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Quarantine at version 0 (10 rows), 1 (a new column), 2 (compacted: the folder keeps removed files);
    on disk, and copied to object storage, where Spark (without hadoop-aws) has no filesystem."""
    root = str(tmp_path / "lake")
    uri = table_uri(root, QUARANTINE)
    write_deltalake(uri, quarantine_rows(0, 10), partition_by=["ingest_date"])
    write_deltalake(uri, quarantine_rows(10, 5, note="x"), mode="append", schema_mode="merge")
    catalog.optimize(Lake(root), "quarantine")
    return request.getfixturevalue("object_store").copy_lake(root) if request.param == "s3" else root


def rows(frame) -> list[tuple]:
    return sorted((r["offset"], r["ingest_date"], r["note"] if "note" in r else None) for r in frame.collect())


def test_read_table_is_the_current_snapshot_with_partition_and_evolved_columns(spark, lake_root: str) -> None:
    assert not has_delta(spark)  # the file-list path: no delta-spark jars here
    assert has_filesystem(spark, lake_root) == (not lake_root.startswith("s3://"))
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
