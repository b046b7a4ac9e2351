"""``edgelake broker``: the embedded Kafka-compatible broker."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from edgelake.broker import EmbeddedBroker
from edgelake.cli.common import console, reported_errors
from edgelake.contracts import EVENT_TYPES
from edgelake.kafka import ensure_topics
from edgelake.settings import BrokerImpl, Settings

app = typer.Typer(help="Start, stop and inspect the embedded Kafka-compatible broker.", no_args_is_help=True)


def _broker(ctx: typer.Context, impl: Optional[str], port: Optional[int]) -> tuple[Settings, EmbeddedBroker]:
    settings: Settings = ctx.obj
    update = {key: value for key, value in (("broker_impl", impl), ("broker_port", port)) if value is not None}
    settings = settings.model_copy(update=update)
    return settings, EmbeddedBroker.from_settings(settings)


ImplOption = typer.Option(None, "--impl", help="noida (persistent, default) or tansu (memory only).")
PortOption = typer.Option(None, "--port", help="Loopback port (default EDGELAKE_BROKER_PORT).")


@app.command("up")
def up(ctx: typer.Context, impl: Optional[str] = ImplOption, port: Optional[int] = PortOption) -> None:
    """Start the broker on loopback, wait until it answers and create the topics."""
    with reported_errors():
        if impl not in (None, *BrokerImpl.__args__):
            raise ValueError(f"--impl must be one of {', '.join(BrokerImpl.__args__)}")
        settings, broker = _broker(ctx, impl, port)
        status = broker.start()
        created = ensure_topics(settings, status.bootstrap_servers)
    table = Table("topic", "partitions", "event", "key")
    for event in EVENT_TYPES:
        table.add_row(settings.topic(event.topic), str(event.partitions), event.__name__, event.key_field)
    console.print(f"[green]{status.impl} broker up[/] at {status.bootstrap_servers} (pid {status.pid}, data {status.data_dir})")
    console.print(table)
    if created:
        console.print(f"created {len(created)} topic(s)")


@app.command("down")
def down(ctx: typer.Context, impl: Optional[str] = ImplOption) -> None:
    """Stop the broker; its data is kept."""
    _, broker = _broker(ctx, impl, None)
    console.print(f"{broker.impl} broker stopped" if broker.stop() else f"{broker.impl} broker was not running")


@app.command("status")
def status(ctx: typer.Context, impl: Optional[str] = ImplOption) -> None:
    """Whether the broker runs and answers; exits 1 when it does not."""
    settings, broker = _broker(ctx, impl, None)
    if not settings.embedded_broker:
        console.print(f"using the Kafka cluster at {settings.kafka_bootstrap_servers}; no embedded broker")
        return
    state = broker.status()
    word = "[green]running[/]" if state.running and state.answering else "[red]stopped[/]"
    console.print(f"{state.impl} broker {word} at {state.bootstrap_servers} (data {state.data_dir})")
    if not (state.running and state.answering):
        raise typer.Exit(1)
