"""Silver and quarantine are readable by independent readers, with identical row counts.

One lake is built for the module: several micro-batch commits, a compaction, then more
commits after it. The Delta log therefore holds removed files that are still on disk, so a
reader that scans the table's folder instead of the log's active file list double counts;
the last test proves that such a naive read would be caught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
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
from edgelake.lake.tables import QUARANTINE, SILVER, table_uri
from support import isolated_settings

TOPIC = "transactions"
VALID = 3000
MALFORMED = 50
BEFORE_COMPACTION = 2000  # valid events ingested before maintain(); the rest after it
TABLES = {"silver": SILVER[TOPIC], "quarantine": QUARANTINE}
# The columns that identify a row: an event by its id, a quarantined Kafka record by its partition and offset.
IDENTITY = {"silver": ["event_id"], "quarantine": ["partition", "offset"]}


def bad_record(i: int, valid: Transaction) -> bytes:
    """A malformed record of one of a few kinds, chosen by ``i``."""
    event = json.loads(valid.to_bytes())
    kinds = [
        lambda: b"\x00\xff not json at all",
        lambda: json.dumps({k: v for k, v in event.items() if k != "card_id"}).encode(),  # missing field
        lambda: json.dumps({**event, "amount": "lots"}).encode(),  # wrong type
        lambda: json.dumps({**event, "event_time": 12}).encode()[:-7],  # truncated JSON
        lambda: b"[1, 2, 3]",  # JSON, not an object
    ]
    return kinds[i % len(kinds)]()


def produce(settings: Settings, valid: list[Transaction], malformed: int, first_bad: int) -> None:
    """``valid`` through the contract-checking producer, ``malformed`` raw bad records interleaved."""
    chunk = -(-len(valid) // malformed)
    raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    with EventProducer(settings, settings.kafka_bootstrap_servers) as producer:
        for n in range(malformed):
            producer.send_many(valid[n * chunk : (n + 1) * chunk])
            producer.flush()
            raw.send(settings.topic(TOPIC), bad_record(first_bad + n, valid[n * chunk]))
            raw.flush()
        producer.send_many(valid[malformed * chunk :])
    assert producer.report.failed == 0 and producer.report.acknowledged == len(valid)
    raw.close()


@dataclass(frozen=True)
class Lake:
    settings: Settings
    valid_ids: frozenset[str]

    def uri(self, name: str) -> str:
        return table_uri(self.settings.lake_root, TABLES[name])

    def delta(self, name: str) -> DeltaTable:
        return DeltaTable(self.uri(name))


@pytest.fixture(scope="module")
def lake(kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path_factory.mktemp("readers"))
    valid = list(transactions(SyntheticConfig(seed=31), VALID))
    bad_before = MALFORMED * 2 // 3
    options = IngestOptions(topics=(TOPIC,), max_events=400)

    produce(settings, valid[:BEFORE_COMPACTION], malformed=bad_before, first_bad=0)
    assert ingest(settings, options, once=True).batches >= 5
    maintain(settings, (TOPIC,))
    produce(settings, valid[BEFORE_COMPACTION:], malformed=MALFORMED - bad_before, first_bad=bad_before)
    assert ingest(settings, options, once=True).batches >= 2
    return Lake(settings, frozenset(tx.event_id for tx in valid))


def test_the_lake_holds_every_record_once(lake: Lake) -> None:
    """The reference every reader is compared with: deltalake's own count, checked against what was produced."""
    silver = lake.delta("silver")
    assert silver.count() == VALID
    assert set(silver.to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()) == lake.valid_ids
    assert lake.delta("quarantine").count() == MALFORMED


def test_the_log_holds_removed_files_that_are_still_on_disk(lake: Lake) -> None:
    """Without this, the readers below could pass while reading the folder instead of the log."""
    for name in TABLES:
        table = lake.delta(name)
        operations = [commit["operation"] for commit in table.history()]
        assert "OPTIMIZE" in operations
        assert operations[0] != "OPTIMIZE", f"{name}: no commit after the compaction"
        active = {Path(uri) for uri in table.file_uris()}
        on_disk = {p for p in Path(lake.uri(name)).rglob("*.parquet") if "_delta_log" not in p.parts}
        assert len(active) >= 2, f"{name}: only one active file"
        assert active < on_disk, f"{name}: compaction left no removed file on disk"


@pytest.mark.parametrize("name", list(TABLES))
def test_duckdb_over_the_arrow_dataset(lake: Lake, name: str) -> None:
    reference = lake.delta(name).count()
    dataset = lake.delta(name).to_pyarrow_dataset()
    with duckdb.connect() as con:
        con.register("lake_table", dataset)
        (rows,) = con.execute("SELECT count(*) FROM lake_table").fetchone()
        columns = ", ".join(f'"{c}"' for c in IDENTITY[name])
        (distinct,) = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {columns} FROM lake_table)").fetchone()
        if name == "silver":
            (distinct_ids,) = con.execute("SELECT count(DISTINCT event_id) FROM lake_table").fetchone()
            assert distinct_ids == rows
            assert {row[0] for row in con.execute("SELECT event_id FROM lake_table").fetchall()} == lake.valid_ids
    assert rows == distinct == reference


@pytest.mark.parametrize("name", list(TABLES))
def test_polars_read_delta(lake: Lake, name: str) -> None:
    reference = lake.delta(name).count()
    frame = pl.read_delta(lake.uri(name))
    assert frame.height == reference
    assert pl.scan_delta(lake.uri(name)).select(pl.len()).collect().item() == reference
    assert frame.select(IDENTITY[name]).unique().height == reference
    if name == "silver":
        assert set(frame["event_id"].to_list()) == lake.valid_ids


@pytest.mark.parametrize("name", list(TABLES))
def test_spark_over_the_active_file_list(lake: Lake, spark, name: str) -> None:
    table = lake.delta(name)
    reference = table.count()
    frame = spark.read.parquet(*table.file_uris())  # partition columns are not in the files
    assert frame.count() == reference
    assert frame.select(*IDENTITY[name]).distinct().count() == reference
    if name == "silver":
        assert {row.event_id for row in frame.select("event_id").collect()} == lake.valid_ids


@pytest.mark.parametrize("name", list(TABLES))
def test_a_naive_folder_read_double_counts(lake: Lake, spark, name: str) -> None:
    """Reading every parquet file under the table (removed ones too) gives more rows than the log says."""
    reference = lake.delta(name).count()
    folder = lake.uri(name)
    naive_arrow = ds.dataset(folder, format="parquet", partitioning="hive").count_rows()  # skips _delta_log
    naive_spark = spark.read.parquet(folder)
    assert naive_arrow == naive_spark.count() > reference
    # The extra rows are copies of rows the compaction rewrote, not rows of their own.
    assert naive_spark.select(*IDENTITY[name]).distinct().count() == reference
