"""Quarantine replay: quarantined records cleaned again, after a contract fix or a schema change, with the
same cleaning as ingest; those that pass land in silver at most once each, and every replay is recorded
in ``quarantine_replays`` (replayed, at which silver version; or still refused, with the new reason).

At most once: a record's event is written to silver only if silver does not hold its event id, checked
against the table as it is at the write. A replay killed between its silver commit and its record of it
finds those events in silver when run again and records them as ``duplicate``: nothing is lost or doubled.
Records already replayed (or found in silver) are not replayed again; refused ones are, each time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from edgelake.contracts import EVENT_BY_TOPIC
from edgelake.ingest.clean import Rejection, clean_record, rows_to_arrow, split_type_conflicts
from edgelake.ingest.lake_writer import SilverIds
from edgelake.lake.catalog import Lake
from edgelake.lake.quarantine import QuarantineFilter, quarantined
from edgelake.lake.tables import QUARANTINE_REPLAYS, SILVER, TableSpec, current_schema

DONE = ("replayed", "duplicate")


@dataclass
class ReplayCounts:
    replayed: int = 0
    duplicates: int = 0
    refused: int = 0


def replay(lake: Lake, topic_prefix: str, which: QuarantineFilter = QuarantineFilter(), batch: int = 5_000) -> ReplayCounts:
    """Replay the quarantined records ``which`` selects that are not replayed yet, ``batch`` records a commit."""
    done = _done(lake)
    rows = [row for row in quarantined(lake, which).to_pylist() if (row["topic"], row["partition"], row["offset"]) not in done]
    by_topic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_topic[row["topic"]].append(row)
    counts = ReplayCounts()
    for topic, records in by_topic.items():
        logical = topic.removeprefix(topic_prefix)
        if logical not in EVENT_BY_TOPIC:
            continue  # a topic of another deployment's prefix
        for start in range(0, len(records), batch):
            _replay_batch(lake, SILVER[logical], EVENT_BY_TOPIC[logical], records[start : start + batch], counts)
    return counts


def _replay_batch(lake: Lake, spec: TableSpec, event_type: Any, records: list[dict[str, Any]], counts: ReplayCounts) -> None:
    silver = lake.find(spec.name)
    schema = current_schema(spec, pa.schema(silver.schema().to_arrow())) if silver is not None else spec.schema
    now = datetime.now(UTC)
    cleaned, refused = [], []
    for record in records:
        outcome = clean_record(event_type, record["value"], schema, now)
        if isinstance(outcome, Rejection):
            refused.append((record, outcome))
        else:
            outcome.update(_topic=record["topic"], _partition=record["partition"], _offset=record["offset"], _ingest_time=now)
            cleaned.append(outcome)
    cleaned, conflicts = split_type_conflicts(cleaned, schema)
    refused += [(_record_of(row, records), why) for row, why in conflicts]
    fresh, _ = SilverIds().new_events(silver, rows_to_arrow(cleaned, schema))
    if fresh.num_rows:
        if silver is None:
            lake.create(spec)
        write_deltalake(lake.uri(spec), fresh, mode="append", schema_mode="merge", storage_options=lake.storage_options)
    version = lake.open(spec.name).version() if fresh.num_rows or silver is not None else None
    landed = {(row["_partition"], row["_offset"]) for row in fresh.select(["_partition", "_offset"]).to_pylist()}
    log = []
    for row in cleaned:
        fate = "replayed" if (row["_partition"], row["_offset"]) in landed else "duplicate"
        log.append(_logged(row["_topic"], row["_partition"], row["_offset"], fate, now, silver_version=version))
    log += [_logged(r["topic"], r["partition"], r["offset"], "refused", now, stage=why.stage, reason=why.reason) for r, why in refused]
    write_deltalake(
        lake.uri(QUARANTINE_REPLAYS), pa.Table.from_pylist(log, QUARANTINE_REPLAYS.schema),
        mode="append", partition_by=list(QUARANTINE_REPLAYS.partition_by), storage_options=lake.storage_options,
    )
    counts.replayed += len(landed)
    counts.duplicates += len(cleaned) - len(landed)
    counts.refused += len(refused)


def _done(lake: Lake) -> set[tuple[str, int, int]]:
    """The quarantined records already replayed or found in silver."""
    log = lake.find(QUARANTINE_REPLAYS.name)
    if log is None:
        return set()
    rows = log.to_pyarrow_dataset().to_table(columns=["topic", "partition", "offset", "outcome"]).to_pylist()
    return {(row["topic"], row["partition"], row["offset"]) for row in rows if row["outcome"] in DONE}


def _record_of(row: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in records if (r["partition"], r["offset"]) == (row["_partition"], row["_offset"]))


def _logged(topic: str, partition: int, offset: int, outcome: str, now: datetime, **detail: Any) -> dict[str, Any]:
    return {
        "topic": topic, "partition": partition, "offset": offset, "outcome": outcome, "silver_version": None, "stage": None,
        "reason": None, "replay_time": now, "replay_date": now.date(), **detail,
    }
