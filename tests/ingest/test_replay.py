"""Quarantine replay: records refused then and valid now land in silver once each, through SIGKILLs at random moments."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from edgelake.bench.silver import silver_rows
from edgelake.contracts import Transaction
from edgelake.settings import Settings
from edgelake.ingest.replay import replay
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import QUARANTINE, QUARANTINE_REPLAYS, SILVER, table_uri
from support import append_silver, command_env

VALID, BROKEN, ALREADY = 20_000, 50, 100


@pytest.mark.chaos
def test_a_replay_killed_at_random_moments_lands_each_record_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", lake_root=str(tmp_path / "lake"), topic_prefix="")
    events = list(transactions(SyntheticConfig(seed=41), VALID))
    append_silver(settings.lake_root, events[:ALREADY])  # ingested before through another path: found, not doubled
    _quarantine(settings.lake_root, events)

    kills, rng = 0, random.Random(7)
    for _ in range(40):
        run = subprocess.Popen(
            [sys.executable, "-m", "edgelake", "quarantine", "replay", "--batch", "250"], env=command_env(settings),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            output, _ = run.communicate(timeout=rng.uniform(1.5, 4.0) if kills < 4 else 300)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGKILL)
            run.wait()
            kills += 1
            continue
        assert run.returncode == 0, output
        break
    assert kills >= 3, f"only {kills} kills: the replay finished too soon to test anything"

    silver = DeltaTable(table_uri(settings.lake_root, SILVER[Transaction.topic])).to_pyarrow_table(columns=["event_id"])
    ids = Counter(silver["event_id"].to_pylist())
    assert [event_id for event_id, n in ids.items() if n > 1] == []
    assert set(ids) == {event.event_id for event in events}
    log = DeltaTable(table_uri(settings.lake_root, QUARANTINE_REPLAYS)).to_pyarrow_table()
    done = Counter((row["partition"], row["offset"]) for row in log.to_pylist() if row["outcome"] in ("replayed", "duplicate"))
    assert sorted(done.values()) == [1] * VALID, "each valid record is recorded as replayed (or found in silver) once"
    refused = [row for row in log.to_pylist() if row["outcome"] == "refused"]
    assert {row["offset"] for row in refused} == set(range(VALID, VALID + BROKEN)) and all("JSON" in row["reason"] for row in refused)

    again = replay(Lake.from_settings(settings), settings.topic_prefix)  # nothing left but what is still invalid
    assert (again.replayed, again.duplicates, again.refused) == (0, 0, BROKEN)


def test_a_replayed_transaction_keeps_its_categories_in_a_silver_table_written_before_categories(tmp_path: Path) -> None:
    lake_root = str(tmp_path / "lake")
    earlier, later = transactions(SyntheticConfig(seed=43), 2)
    later = later.model_copy(update={"categories": {"ProductCD": "W"}})
    silver_uri = table_uri(lake_root, SILVER[Transaction.topic])
    write_deltalake(silver_uri, silver_rows([earlier]).drop_columns(["categories"]), partition_by=["event_date"])
    _quarantine(lake_root, [later])

    counts = replay(Lake(lake_root), "")

    assert (counts.replayed, counts.refused) == (1, BROKEN)
    silver = DeltaTable(silver_uri).to_pyarrow_table(columns=["event_id", "categories"]).to_pylist()
    assert {row["event_id"]: row["categories"] for row in silver} == {earlier.event_id: None, later.event_id: [("ProductCD", "W")]}


def _quarantine(lake_root: str, events: list[Transaction]) -> None:
    """The events as ingest quarantined them two days ago (dated more than a day ahead of it), and some bytes that are not JSON."""
    then = datetime.now(UTC) - timedelta(days=2)
    rows = [
        {"key": e.key, "value": e.to_bytes(), "offset": offset, "stage": "sanity", "reason": "field 'event_time': more than a day after the ingest time"}
        for offset, e in enumerate(events)
    ] + [
        {"key": None, "value": b"not json %d" % n, "offset": VALID + n, "stage": "decode", "reason": "value is not JSON"} for n in range(BROKEN)
    ]
    table = pa.Table.from_pylist(
        [{**row, "topic": "transactions", "partition": 0, "ingest_time": then, "ingest_date": then.date()} for row in rows], QUARANTINE.schema
    )
    write_deltalake(table_uri(lake_root, QUARANTINE), table, partition_by=list(QUARANTINE.partition_by))
