"""``edgelake produce``: replay a source into its Kafka topic with progress and a delivery summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgelake.console import console, reported_errors
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.ingest.sources import Kind, SourceOptions

app = typer.Typer(help="Produce events into Kafka from real data sets, a generator or your own files.", no_args_is_help=True)


@dataclass
class Delivery:
    """The delivery summary of one produce run."""

    kind: str
    source: str
    sent: int
    acknowledged: int
    failed: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.acknowledged == self.sent


def run_producer(settings: Settings, kind: Kind, source: str, options: SourceOptions, rate: float = 0.0) -> Delivery:
    """Produce one source into its topic with a progress bar."""
    from edgelake.broker import bootstrap_servers
    from edgelake.kafka import EventProducer, produce
    from edgelake.ingest.sources import expected_count, source_events

    if source == "file":  # a user's file is validated whole before anything is sent
        for _ in source_events(kind, source, options, settings):
            pass
    events = source_events(kind, source, options, settings)
    servers = bootstrap_servers(settings)
    progress = Progress(
        TextColumn(f"{kind} from {source}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
    started = time.monotonic()
    with progress, EventProducer(settings, servers) as producer:
        task = progress.add_task(kind, total=expected_count(source, options))
        report = produce(producer, events, rate, on_progress=lambda n: progress.advance(task, n))
    seconds = time.monotonic() - started
    return Delivery(kind, source, report.sent, report.acknowledged, report.failed, seconds, report.errors)


def print_deliveries(deliveries: list[Delivery]) -> None:
    table = Table("events", "source", "sent", "acknowledged", "failed", "time", "events/s", title="delivery summary")
    for d in deliveries:
        table.add_row(
            d.kind, d.source, f"{d.sent:,}", f"{d.acknowledged:,}", f"{d.failed:,}", f"{d.seconds:.1f} s", f"{d.events_per_s:,.0f}"
        )
    console.print(table)
    for d in deliveries:
        for error in d.errors[:5]:
            console.print(f"[red]{d.kind}: {error}[/]")


def _register(kind: Kind, summary: str, sources: str) -> None:
    def command(
        ctx: typer.Context,
        source: str = typer.Option(..., "--source", "-s", help=f"One of: {sources}."),
        count: int | None = typer.Option(None, "--count", "-n", min=0, help="How many events (default: all)."),
        rate: float = typer.Option(0.0, "--rate", min=0, help="Events per second; 0 = as fast as possible."),
        path: Path | None = typer.Option(None, "--path", help="Input file, or a local copy of the data set."),
        mapping: list[str] = typer.Option([], "--map", help="FIELD=COLUMN[,FIELD=COLUMN...] for the file source."),
        seed: int = typer.Option(7, "--seed", help="Seed of the synthetic generator and label delays."),
        devices: int | None = typer.Option(None, "--devices", min=1, help="Simulated devices to deal events to."),
    ) -> None:
        from edgelake.ingest.sources import SourceOptions
        from edgelake.ingest.sources.tabular_file import parse_mapping

        with reported_errors():
            options = SourceOptions(count, seed, path, parse_mapping(mapping), devices)
            delivery = run_producer(ctx.obj, kind, source, options, rate)
        print_deliveries([delivery])
        if not delivery.complete:
            raise typer.Exit(1)

    command.__doc__ = f"{summary} Sources: {sources}."
    app.command(kind)(command)


_register("transactions", "Card transactions into the transactions topic.", "ulb, synthetic, file")
_register("labels", "Late fraud labels into the fraud-labels topic.", "ulb, synthetic, file")
_register("iot", "Sensor readings into the iot-readings topic.", "shuttle, file")
_register("images", "Camera frames into the camera-frames topic.", "fashion-mnist")
