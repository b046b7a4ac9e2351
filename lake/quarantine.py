"""The quarantine table for operators: what was refused, why, and each refused record as it arrived."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from edgelake.lake.catalog import Lake
from edgelake.lake.tables import QUARANTINE


@dataclass(frozen=True)
class QuarantineFilter:
    """Which quarantined records: from a Kafka topic, with a reason containing some text, ingested since a time."""

    topic: str | None = None
    reason: str | None = None
    since: datetime | None = None


def quarantined(lake: Lake, which: QuarantineFilter = QuarantineFilter()) -> pa.Table:
    """The quarantine rows ``which`` selects, in the order they were ingested (``UnknownTable`` before any)."""
    conditions = []
    if which.topic is not None:
        conditions.append(pc.field("topic") == which.topic)
    if which.since is not None:
        conditions.append(pc.field("ingest_time") >= pa.scalar(which.since, pa.timestamp("us", tz="UTC")))
    condition = None
    for part in conditions:
        condition = part if condition is None else condition & part
    rows = lake.open(QUARANTINE.name).to_pyarrow_dataset().to_table(filter=condition)
    if which.reason:
        rows = rows.filter(pc.match_substring(rows["reason"], which.reason))
    return rows.sort_by([("ingest_time", "ascending"), ("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")])


def by_reason(rows: pa.Table) -> pa.Table:
    """Quarantine rows counted per topic, stage and reason, with the first and last ingest time; most records first."""
    grouped = rows.group_by(["topic", "stage", "reason"], use_threads=False).aggregate(
        [("offset", "count"), ("ingest_time", "min"), ("ingest_time", "max")]
    )
    grouped = grouped.rename_columns({"offset_count": "records", "ingest_time_min": "first", "ingest_time_max": "last"})
    grouped = grouped.select(["topic", "stage", "reason", "records", "first", "last"])
    return grouped.sort_by([("records", "descending"), ("topic", "ascending"), ("reason", "ascending")])
