"""``edgelake quarantine``: the records ingest refused, why, and each one as it arrived."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgelake.console import console, reported_errors
from edgelake.contracts import EVENT_BY_TOPIC
from edgelake.errors import UserError
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.lake.quarantine import QuarantineFilter

app = typer.Typer(help="The records ingest refused, why, and each one as it arrived.", no_args_is_help=True)
TOPIC_OPTION = typer.Option(None, "--topic", help="A topic, by its event name (transactions) or its Kafka name.")
REASON_OPTION = typer.Option(None, "--reason", help="Only reasons containing this text.")
SINCE_OPTION = typer.Option(None, "--since", help="Only records ingested at or after this time (UTC).")


@app.command("list")
def list_(
    ctx: typer.Context,
    topic: str | None = TOPIC_OPTION,
    reason: str | None = REASON_OPTION,
    since: datetime | None = SINCE_OPTION,
    records: bool = typer.Option(False, "--records", help="List the records themselves, not counts per reason."),
    limit: int = typer.Option(50, "--limit", min=1, help="Most records listed with --records."),
) -> None:
    """Quarantined records counted per topic, stage and reason (or, with --records, one by one)."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.quarantine import by_reason, quarantined

    settings: Settings = ctx.obj
    which = _filter(settings, topic, reason, since)
    with reported_errors():
        rows = quarantined(Lake.from_settings(settings), which)
    if records:
        listing = Table("topic", "partition", "offset", "stage", "reason", "ingested", title=f"{rows.num_rows:,} quarantined records")
        for row in rows.slice(0, limit).to_pylist():
            when = f"{row['ingest_time']:%Y-%m-%d %H:%M:%S}"
            listing.add_row(row["topic"], str(row["partition"]), str(row["offset"]), row["stage"], row["reason"], when)
    else:
        listing = Table("topic", "stage", "reason", "records", "first", "last", title=f"{rows.num_rows:,} quarantined records")
        for row in by_reason(rows).to_pylist():
            first, last = f"{row['first']:%Y-%m-%d %H:%M}", f"{row['last']:%Y-%m-%d %H:%M}"
            listing.add_row(row["topic"], row["stage"], row["reason"], f"{row['records']:,}", first, last)
    console.print(listing)


@app.command("replay")
def replay(
    ctx: typer.Context,
    topic: str | None = TOPIC_OPTION,
    reason: str | None = REASON_OPTION,
    since: datetime | None = SINCE_OPTION,
    batch: int = typer.Option(5_000, "--batch", min=1, help="Records per silver commit."),
) -> None:
    """Clean the selected quarantined records again (after a contract fix or a schema change); land those that pass in
    silver, at most once each, and record every replay in quarantine_replays. Run one replay at a time."""
    from edgelake.ingest.replay import replay as replay_quarantined
    from edgelake.lake.catalog import Lake

    settings: Settings = ctx.obj
    which = _filter(settings, topic, reason, since)
    with reported_errors():
        counts = replay_quarantined(Lake.from_settings(settings), settings.topic_prefix, which, batch)
    console.print(f"replayed {counts.replayed:,} · already in silver {counts.duplicates:,} · still refused {counts.refused:,}", highlight=False)


@app.command("show")
def show(
    ctx: typer.Context,
    topic: str = typer.Argument(..., help="The record's topic (event name or Kafka name)."),
    partition: int = typer.Argument(..., min=0),
    offset: int = typer.Argument(..., min=0),
) -> None:
    """One quarantined record as it arrived: its key and value, the stage that refused it and why."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.quarantine import QuarantineFilter, quarantined

    settings: Settings = ctx.obj
    kafka_topic = _kafka_topic(settings, topic)
    with reported_errors():
        rows = quarantined(Lake.from_settings(settings), QuarantineFilter(kafka_topic))
        found = [row for row in rows.to_pylist() if (row["partition"], row["offset"]) == (partition, offset)]
        if not found:
            raise UserError(f"no quarantined record at {kafka_topic} partition {partition} offset {offset}")
    row = found[-1]
    console.print(f"[bold]{row['topic']}[/] partition {row['partition']} offset {row['offset']}", highlight=False)
    console.print(f"refused at {row['stage']}: {row['reason']}", highlight=False, markup=False)
    console.print(f"ingested {row['ingest_time']:%Y-%m-%d %H:%M:%S} UTC", highlight=False)
    console.print(f"key: {_shown(row['key'])}", highlight=False, markup=False)
    console.print(f"value: {_shown(row['value'])}", highlight=False, markup=False, soft_wrap=True)


def _filter(settings: Settings, topic: str | None, reason: str | None, since: datetime | None) -> QuarantineFilter:
    from edgelake.lake.quarantine import QuarantineFilter

    return QuarantineFilter(_kafka_topic(settings, topic), reason, since.replace(tzinfo=since.tzinfo or UTC) if since else None)


def _kafka_topic(settings: Settings, topic: str | None) -> str | None:
    return settings.topic(topic) if topic in EVENT_BY_TOPIC else topic


def _shown(data: bytes | None) -> str:
    """UTF-8 text as is, anything else as base64 (marked so)."""
    if data is None:
        return "(none)"
    try:
        return data.decode()
    except UnicodeDecodeError:
        return f"base64:{base64.b64encode(data).decode()}"
