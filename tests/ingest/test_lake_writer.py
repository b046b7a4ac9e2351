"""The lake writer's fence: of two writers that chose the same offsets on one snapshot, only the first lands them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from edgelake.contracts import Transaction
from edgelake.ingest.kafka_source import Fetched, OffsetRange
from edgelake.ingest.lake_writer import ConcurrentCommit, LakeWriter, TopicBatch
from edgelake.ingest.pipeline import bronze_rows, classify, merged
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.lake.catalog import Lake
from edgelake.lake.quarantine import quarantined
from edgelake.lake.sql import run_query
from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER

TOPIC = "transactions"


def batch(partition: int, start: int, count: int, seed: int = 3, bad: int = 2) -> TopicBatch:
    """``count`` records of one partition from offset ``start``, the last ``bad`` of them not JSON."""
    values = [tx.to_bytes() for tx in transactions(SyntheticConfig(seed=seed + partition * 1000 + start), count - bad)]
    values += [b"not json"] * bad
    offsets = OffsetRange(TOPIC, partition, start, start + count)
    now = int(datetime.now(UTC).timestamp() * 1000)
    fetched = Fetched(offsets, [None] * count, values, list(range(start, start + count)), [now] * count)
    chunk = classify(bronze_rows(fetched, datetime.now(UTC)), values, Transaction, None, SILVER[TOPIC].schema)
    return merged(offsets, [chunk], SILVER[TOPIC].schema)


def lineage(lake: Lake) -> dict[str, list[tuple[int, int]]]:
    """(partition, offset) of every row, per table."""
    columns = {BRONZE[TOPIC]: ("partition", "offset"), SILVER[TOPIC]: ("_partition", "_offset"), QUARANTINE: ("partition", "offset")}
    rows = {}
    for spec, (partition, offset) in columns.items():
        table = lake.open(spec.name).to_pyarrow_table(columns=[partition, offset])
        rows[spec.name] = sorted(zip(table[partition].to_pylist(), table[offset].to_pylist(), strict=True))
    return rows


@pytest.fixture(params=["local", "s3"])
def lake(tmp_path: Path, request: pytest.FixtureRequest) -> Lake:
    """A lake, on local disk and on S3 (moto), whose tables hold offsets 0-99 of partitions 0 and 1."""
    lake = Lake(str(tmp_path / "lake") if request.param == "local" else request.getfixturevalue("object_store").new_lake())
    writer = LakeWriter(lake, "edgelake-ingest")
    for partition in (0, 1):
        writer.commit(batch(partition, 0, 100))
    return lake


def stale(lake: Lake, spec, version: int) -> DeltaTable:
    """The table as another writer planned on it, before the latest commits."""
    return lake.open(spec.name, version)


def test_the_second_of_two_writers_on_one_snapshot_is_fenced_out(lake: Lake) -> None:
    versions = {spec.name: lake.open(spec.name).version() for spec in (BRONZE[TOPIC], SILVER[TOPIC], QUARANTINE)}
    LakeWriter(lake, "edgelake-ingest").commit(batch(0, 100, 50))
    second = LakeWriter(lake, "edgelake-ingest")
    again = batch(0, 100, 50, seed=4)  # the same offsets read again (other contents, so a double would show)
    for spec, rows in ((BRONZE[TOPIC], again.bronze), (SILVER[TOPIC], again.silver), (QUARANTINE, again.quarantine)):
        with pytest.raises(ConcurrentCommit, match="another writer committed offsets"):
            second._append(spec, stale(lake, spec, versions[spec.name]), again, rows)
    other = batch(1, 100, 50)  # other offsets of the same tables still commit on that snapshot
    for spec, rows in ((BRONZE[TOPIC], other.bronze), (SILVER[TOPIC], other.silver), (QUARANTINE, other.quarantine)):
        assert second._append(spec, stale(lake, spec, versions[spec.name]), other, rows)

    rows = lineage(lake)
    assert rows[BRONZE[TOPIC].name] == sorted((p, o) for p in (0, 1) for o in range(150))
    assert len(rows[SILVER[TOPIC].name]) == len(set(rows[SILVER[TOPIC].name])) == 2 * (98 + 48)
    assert rows[QUARANTINE.name] == sorted((p, o) for p in (0, 1) for o in (98, 99, 148, 149))
    assert LakeWriter(lake, "edgelake-ingest").next_offset(TOPIC, 1) == 150


def test_a_fenced_out_batch_planned_again_skips_what_the_winner_committed(lake: Lake) -> None:
    version = lake.open(BRONZE[TOPIC].name).version()
    LakeWriter(lake, "edgelake-ingest").commit(batch(0, 100, 50))
    loser = LakeWriter(lake, "edgelake-ingest")
    planned = batch(0, 100, 80)
    with pytest.raises(ConcurrentCommit):
        loser._append(BRONZE[TOPIC], stale(lake, BRONZE[TOPIC], version), planned, planned.bronze)
    result = loser.commit(planned)  # planned again on the tables as they are now: only offsets 150-179 are new
    assert (result.bronze, result.silver, result.quarantined) == (30, 30 - 2, 2)
    bronze = lineage(lake)[BRONZE[TOPIC].name]
    assert bronze == sorted({(p, o) for p in (0, 1) for o in range(100)} | {(0, o) for o in range(180)})


def test_rows_another_pipeline_wrote_are_never_deleted_by_the_fence(lake: Lake) -> None:
    renamed = LakeWriter(lake, "renamed-ingest")  # a new pipeline name on an old lake reads every offset again
    renamed.commit(batch(0, 0, 100))
    silver = lake.open(SILVER[TOPIC].name).to_pyarrow_table(columns=["_partition"])
    assert pc.sum(pc.equal(silver["_partition"], 0)).as_py() == 98  # its events were known: none deleted, none doubled
    assert len(lineage(lake)[BRONZE[TOPIC].name]) == 300


def test_storage_options_alone_reach_the_object_store_for_writes_and_reads(object_store, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no AWS_* variable set, a lake's storage options are all that lead deltalake to the store and its credentials."""
    root = object_store.new_lake()
    options = {"AWS_ENDPOINT_URL": object_store.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    options |= {"AWS_ACCESS_KEY_ID": "edgelake-test", "AWS_SECRET_ACCESS_KEY": "edgelake-test"}
    for name in options:
        monkeypatch.delenv(name)
    lake = Lake(root, storage_options=options)

    result = LakeWriter(lake, "edgelake-ingest").commit(batch(0, 0, 100))

    assert (result.bronze, result.silver, result.quarantined) == (100, 98, 2)
    assert lake.exists(SILVER[TOPIC].name)
    assert run_query(lake, f"SELECT count(*) AS n FROM {SILVER[TOPIC].name}").table.to_pylist() == [{"n": 98}]
    assert quarantined(lake)["offset"].to_pylist() == [98, 99]
    assert lineage(lake)[BRONZE[TOPIC].name] == [(0, o) for o in range(100)]
