"""``edgelake ingest``: land Kafka topics in the Delta Lake with Beam, exactly once."""

from __future__ import annotations

import signal
import threading

import typer
from rich.table import Table

from edgelake.console import console, reported_errors
from edgelake.errors import UserError
from edgelake.settings import Settings

app = typer.Typer(help="Land Kafka topics in the Delta Lake with Beam, exactly once.", no_args_is_help=True)


@app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def run(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Ingest up to the end offsets seen at start, then exit."),
    topics: list[str] = typer.Option([], "--topics", help="Topics to ingest (default: all event topics)."),
    runner: str = typer.Option("DirectRunner", "--runner", help="Beam runner; other pipeline options follow as extra arguments."),
    pipeline: str = typer.Option("edgelake-ingest", "--pipeline", help="Pipeline name: the offsets' app id prefix."),
    max_events: int = typer.Option(250_000, "--max-events", min=1, help="Most events in one micro-batch."),
    max_bytes: int = typer.Option(256 * 1024 * 1024, "--max-bytes", min=1024, help="Most bytes in one micro-batch."),
    max_wait: float = typer.Option(2.0, "--max-wait", min=0, help="Seconds a partial micro-batch may wait to fill."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on this port."),
) -> None:
    """Run the ingester: Kafka -> bronze, silver and quarantine tables. Extra arguments go to Beam."""
    from edgelake.ingest.loop import IngestOptions, ingest

    settings: Settings = ctx.obj
    with reported_errors():
        from edgelake.contracts import EVENT_BY_TOPIC

        unknown = set(topics) - set(EVENT_BY_TOPIC)
        if unknown:
            raise UserError(f"unknown topic(s) {', '.join(sorted(unknown))}; choose from {', '.join(EVENT_BY_TOPIC)}")
        options = IngestOptions(
            pipeline=pipeline,
            topics=tuple(topics) or tuple(EVENT_BY_TOPIC),
            max_events=max_events,
            max_bytes=max_bytes,
            max_wait_s=max_wait,
            runner_args=(f"--runner={runner}", *ctx.args),
        )
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            totals = ingest(settings, options, once=once, stop=stop)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    print_table_counts(settings, options.topics, totals.counts)


def print_table_counts(settings: Settings, topics: tuple[str, ...], counts: dict[str, dict[str, int]]) -> None:
    """This run's counts beside the rows each table holds now."""
    from edgelake.lake.catalog import Lake, row_count
    from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER

    lake = Lake.from_settings(settings)

    table = Table("topic", "read", "silver", "quarantined", "duplicates", "bronze rows", "silver rows", title="ingest")
    for topic in topics:
        mine = counts.get(topic, {})
        table.add_row(
            topic,
            *(f"{mine.get(k, 0):,}" for k in ("bronze", "silver", "quarantined", "duplicates")),
            f"{row_count(lake, BRONZE[topic].name):,}",
            f"{row_count(lake, SILVER[topic].name):,}",
        )
    console.print(table)
    console.print(f"quarantine table: {row_count(lake, QUARANTINE.name):,} rows")
