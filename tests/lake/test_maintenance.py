"""Table maintenance: compaction and checkpoints, by hand and by the ingester, and the vacuum guard."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
from kafka import KafkaProducer

from edgelake.broker import EmbeddedBroker
from edgelake.contracts import Transaction
from edgelake.settings import Settings
from edgelake.ingest.loop import IngestOptions, ingest, maintain
from edgelake.kafka import EventProducer
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER, table_uri
from support import isolated_settings

TOPIC = "transactions"
MIN_RETENTION_HOURS = 168


def produce(settings: Settings, valid: int, malformed: int, seed: int) -> set[str]:
    """``valid`` synthetic transactions and ``malformed`` records that are not JSON; return the valid ids."""
    events = list(transactions(SyntheticConfig(seed=seed), valid))
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        producer.send_many(events)
    assert producer.report.failed == 0
    raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    for i in range(malformed):
        raw.send(settings.topic(TOPIC), b"not json %d" % i)
    raw.close()
    return {event.event_id for event in events}


def silver(settings: Settings) -> DeltaTable:
    return DeltaTable(table_uri(settings.lake_root, SILVER[TOPIC]))


def operations(table: DeltaTable) -> list[str]:
    return [commit["operation"] for commit in table.history()]


def checkpoints(table_dir: str) -> list[Path]:
    return sorted((Path(table_dir) / "_delta_log").glob("*.checkpoint.parquet"))


def data_files_on_disk(table_dir: str) -> set[Path]:
    return {p for p in Path(table_dir).rglob("*.parquet") if "_delta_log" not in p.parts}


def test_maintain_compacts_and_checkpoints_without_changing_the_data(
    kafka: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    ids = produce(settings, 1200, 12, seed=41)
    totals = ingest(settings, IngestOptions(topics=(TOPIC,), max_events=200), once=True)
    assert totals.batches >= 6
    uri = table_uri(settings.lake_root, SILVER[TOPIC])
    before = silver(settings)
    files_before, rows_before = len(before.file_uris()), before.count()
    assert files_before >= 6
    assert "OPTIMIZE" not in operations(before)
    assert not checkpoints(uri)

    maintain(settings, (TOPIC,))

    after = silver(settings)
    assert len(after.file_uris()) < files_before
    assert after.count() == rows_before == len(ids)
    assert set(after.to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()) == ids
    assert operations(after)[0] == "OPTIMIZE"
    assert [p.name for p in checkpoints(uri)] == [f"{after.version():020d}.checkpoint.parquet"]
    # Every table the topic feeds is maintained, not only silver.
    for spec in (BRONZE[TOPIC], QUARANTINE):
        table = DeltaTable(table_uri(settings.lake_root, spec))
        assert operations(table)[0] == "OPTIMIZE"
        assert checkpoints(table_uri(settings.lake_root, spec))
    assert DeltaTable(table_uri(settings.lake_root, QUARANTINE)).count() == 12

    # The offsets the exactly-once commits rely on survive the compaction and the checkpoint:
    # nothing is read again, and new events land once.
    assert ingest(settings, IngestOptions(topics=(TOPIC,)), once=True).batches == 0
    more = produce(settings, 300, 0, seed=42)
    ingest(settings, IngestOptions(topics=(TOPIC,)), once=True)
    final = silver(settings).to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()
    assert len(final) == len(set(final)) and set(final) == ids | more


def test_the_ingester_compacts_every_n_batches(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    ids = produce(settings, 1000, 0, seed=43)
    totals = ingest(settings, IngestOptions(topics=(TOPIC,), max_events=200, compact_every=2), once=True)
    assert totals.batches >= 4
    table = silver(settings)
    assert operations(table).count("OPTIMIZE") == totals.batches // 2
    # Each batch commits one file per partition; the last compaction left one per date.
    assert len(table.file_uris()) <= 1 + Transaction.partitions * (totals.batches % 2)
    assert checkpoints(table_uri(settings.lake_root, SILVER[TOPIC]))
    assert table.count() == len(ids)


# The CLI's vacuum guard, against a lake with one compaction behind it.


@pytest.fixture(scope="module")
def compacted(kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path_factory.mktemp("vacuum"))
    produce(settings, 600, 6, seed=44)
    assert ingest(settings, IngestOptions(topics=(TOPIC,), max_events=150), once=True).batches >= 4
    maintain(settings, (TOPIC,))
    return settings


def edgelake(settings: Settings, *args: str, lake_root: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COLUMNS": "400",
        "EDGELAKE_LAKE_ROOT": lake_root or settings.lake_root,
        "EDGELAKE_DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "edgelake", *args], capture_output=True, text=True, env=env, timeout=300
    )


def removed_files(settings: Settings) -> set[Path]:
    """Data files on disk that the table's current version no longer references."""
    uri = table_uri(settings.lake_root, SILVER[TOPIC])
    return data_files_on_disk(uri) - {Path(f) for f in silver(settings).file_uris()}


def copy_lake(settings: Settings, tmp_path: Path) -> str:
    """A copy of the lake for a command that may delete files, so the module's lake stays intact."""
    copy = tmp_path / "lake"
    shutil.copytree(settings.lake_root, copy)
    return str(copy)


def test_vacuum_below_the_minimum_retention_needs_force(compacted: Settings, tmp_path: Path) -> None:
    lake_root = copy_lake(compacted, tmp_path)
    on_disk = data_files_on_disk(table_uri(lake_root, SILVER[TOPIC]))
    args = ("lake", "vacuum", "silver_transactions", "--retention-hours", "0")
    result = edgelake(compacted, *args, lake_root=lake_root)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"{MIN_RETENTION_HOURS} h" in message and "--force" in message
    assert data_files_on_disk(table_uri(lake_root, SILVER[TOPIC])) == on_disk


def test_vacuum_dry_run_lists_the_removed_files_and_deletes_nothing(compacted: Settings) -> None:
    removed = removed_files(compacted)
    assert removed, "the compaction should leave removed files on disk"
    args = ("lake", "vacuum", "silver_transactions", "--retention-hours", "0", "--force", "--dry-run")
    result = edgelake(compacted, *args)
    assert result.returncode == 0, result.stderr
    found = re.search(r"silver_transactions: would delete (\d+) file\(s\)", result.stdout)
    assert found, result.stdout
    assert int(found.group(1)) == len(removed) > 0
    assert removed_files(compacted) == removed


def test_vacuum_with_force_deletes_the_removed_files_only(compacted: Settings, tmp_path: Path) -> None:
    lake_root = copy_lake(compacted, tmp_path)
    uri = table_uri(lake_root, SILVER[TOPIC])
    rows = DeltaTable(uri).count()
    assert ds.dataset(uri, format="parquet", partitioning="hive").count_rows() > rows
    args = ("lake", "vacuum", "silver_transactions", "--retention-hours", "0", "--force")
    result = edgelake(compacted, *args, lake_root=lake_root)
    assert result.returncode == 0, result.stderr
    found = re.search(r"silver_transactions: deleted (\d+) file\(s\)", result.stdout)
    assert found and int(found.group(1)) > 0, result.stdout
    table = DeltaTable(uri)
    assert data_files_on_disk(uri) == {Path(f) for f in table.file_uris()}
    assert table.count() == rows == ds.dataset(uri, format="parquet", partitioning="hive").count_rows()


def test_vacuum_of_an_unknown_table_fails(compacted: Settings) -> None:
    result = edgelake(compacted, "lake", "vacuum", "silver_nonesuch")
    assert result.returncode == 2
    assert "silver_nonesuch" in result.stderr


def test_lake_tables_lists_silver_with_its_row_count(compacted: Settings) -> None:
    result = edgelake(compacted, "lake", "tables")
    assert result.returncode == 0, result.stderr
    line = next((line for line in result.stdout.splitlines() if "silver_transactions" in line), None)
    assert line is not None, result.stdout
    assert re.search(r"│\s*600\s*│", line), line
    quarantine = next(line for line in result.stdout.splitlines() if " quarantine " in line)
    assert re.search(r"│\s*6\s*│", quarantine), quarantine
