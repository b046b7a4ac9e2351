"""The catalog on disk: describe, history, optimize and time travel by table name, from Python and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, write_deltalake

from edgelake.lake import catalog
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import QUARANTINE, SILVER, current_schema, table_uri
from edgelake.settings import Settings
from support import quarantine_rows


@pytest.fixture
def lake_root(tmp_path: Path) -> str:
    """A lake whose quarantine has three versions: 10 rows, then 5 more, then 5 with a new column."""
    root = str(tmp_path / "lake")
    uri = table_uri(root, QUARANTINE)
    write_deltalake(uri, quarantine_rows(0, 10), partition_by=["ingest_date"])
    write_deltalake(uri, quarantine_rows(10, 5), mode="append", commit_properties=CommitProperties(custom_metadata={"pipeline": "p1"}))
    write_deltalake(uri, quarantine_rows(15, 5, note="x"), mode="append", schema_mode="merge")
    return root


def edgelake(lake_root: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400", "EDGELAKE_LAKE_ROOT": lake_root}
    return subprocess.run([sys.executable, "-m", "edgelake", *args], capture_output=True, text=True, env=env, timeout=120)


def test_describe_gives_the_current_state_with_evolved_columns(lake_root: str) -> None:
    info = catalog.describe(Lake(lake_root), "quarantine")
    assert (info.version, info.rows, info.files) == (2, 20, 3)
    assert info.schema.names == [*QUARANTINE.schema.names, "note"]
    assert info.size_bytes > 0

    result = edgelake(lake_root, "lake", "describe", "quarantine")
    assert result.returncode == 0, result.stderr
    assert "version 2 · 20 rows · 3 files" in result.stdout
    assert any("note" in line and "evolved" in line for line in result.stdout.splitlines())


def test_a_silver_table_written_before_its_contract_gained_a_field_takes_it_as_a_nullable_column() -> None:
    spec = SILVER["transactions"]
    assert spec.schema.field("categories").type == pa.map_(pa.string(), pa.string())  # derived from Transaction.categories
    written = pa.schema([field for field in spec.schema if field.name != "categories"]).append(pa.field("promo", pa.int64()))

    schema = current_schema(spec, written)

    assert schema.names == [*written.names, "categories"] and schema.field("categories").nullable
    assert current_schema(spec, spec.schema) == spec.schema


def test_history_lists_commits_newest_first_with_their_metadata(lake_root: str) -> None:
    commits = catalog.history(Lake(lake_root), "quarantine")
    assert [c["version"] for c in commits] == [2, 1, 0]
    assert commits[1]["metadata"] == {"pipeline": "p1"}
    assert commits[0]["metrics"]["num_added_rows"] == 5

    result = edgelake(lake_root, "lake", "history", "quarantine", "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert "pipeline=p1" in result.stdout
    assert "│ 0 " not in result.stdout  # only the two newest


def test_open_travels_to_an_older_version_and_refuses_one_that_never_was(lake_root: str) -> None:
    assert Lake(lake_root).open("quarantine", version=0).count() == 10
    assert Lake(lake_root).open("quarantine", version=1).count() == 15
    with pytest.raises(catalog.UnknownTable, match="versions 0 to 2, not 7"):
        Lake(lake_root).open("quarantine", version=7)


def test_optimize_compacts_without_changing_the_rows(lake_root: str) -> None:
    result = edgelake(lake_root, "lake", "optimize", "all")
    assert result.returncode == 0, result.stderr
    assert "quarantine: 3 files compacted into 1" in result.stdout
    info = catalog.describe(Lake(lake_root), "quarantine")
    assert (info.rows, info.files) == (20, 1)
    assert catalog.history(Lake(lake_root), "quarantine", 1)[0]["operation"] == "OPTIMIZE"


@pytest.mark.parametrize(
    ("table", "message"),
    [("nope", "no table 'nope'; the catalog has"), ("silver_transactions", "table 'silver_transactions' has no data yet")],
)
def test_unknown_and_unwritten_tables_are_refused_clearly(lake_root: str, table: str, message: str) -> None:
    for command in ("describe", "history", "optimize"):
        result = edgelake(lake_root, "lake", command, table)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert message in " ".join(result.stderr.split())
    assert catalog.existing(Lake(lake_root)) == ["quarantine"]


def test_a_lake_from_settings_takes_storage_options_as_json_and_never_shows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELAKE_LAKE_STORAGE_OPTIONS", '{"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}')
    settings = Settings(lake_root="s3://bucket/lake", registry_dir=Path("/srv/registry"))
    lake = Lake.from_settings(settings)
    options = {"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    assert lake == Lake("s3://bucket/lake", options, Path("/srv/registry"), settings.data_dir / "registry")
    assert "s3cr3t" not in repr(lake) + settings.model_dump_json()
