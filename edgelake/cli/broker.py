"""``edgelake broker``: the embedded Apache Kafka broker (or cluster) on loopback."""

from __future__ import annotations


import typer
from rich.table import Table

from edgelake.broker import EmbeddedBroker
from edgelake.console import console, reported_errors
from edgelake.contracts import EVENT_TYPES
from edgelake.kafka import ensure_topics
from edgelake.settings import Settings

app = typer.Typer(help="Start, stop and inspect the embedded Apache Kafka broker.", no_args_is_help=True)


def _broker(ctx: typer.Context, brokers: int | None, port: int | None) -> tuple[Settings, EmbeddedBroker]:
    settings: Settings = ctx.obj
    update = {key: value for key, value in (("broker_count", brokers), ("broker_port", port)) if value is not None}
    settings = settings.model_copy(update=update)
    with reported_errors():
        return settings, EmbeddedBroker.from_settings(settings)


BrokersOption = typer.Option(None, "--brokers", help="Nodes of the cluster (default EDGELAKE_BROKER_COUNT, 1); 3 replicates every topic.")
PortOption = typer.Option(None, "--port", help="Client port of the first node (default EDGELAKE_BROKER_PORT).")


@app.command("up")
def up(ctx: typer.Context, brokers: int | None = BrokersOption, port: int | None = PortOption) -> None:
    """Start Apache Kafka on loopback (KRaft, each node broker and controller), wait until it answers and create the topics."""
    with reported_errors():
        settings, broker = _broker(ctx, brokers, port)
        status = broker.start()
        created = ensure_topics(settings, status.bootstrap_servers)
    table = Table("topic", "partitions", "event", "key")
    for event in EVENT_TYPES:
        table.add_row(settings.topic(event.topic), str(event.partitions), event.__name__, event.key_field)
    nodes = len(status.nodes)
    console.print(
        f"[green]Apache Kafka up[/] at {status.bootstrap_servers} ({nodes} node{'s' if nodes > 1 else ''}, "
        f"pid {', '.join(map(str, status.pids))}, data {status.data_dir})"
    )
    console.print(table)
    if created:
        console.print(f"created {len(created)} topic(s)")


@app.command("down")
def down(ctx: typer.Context, brokers: int | None = BrokersOption) -> None:
    """Stop the broker; its data is kept."""
    _, broker = _broker(ctx, brokers, None)
    console.print("Apache Kafka stopped" if broker.stop() else "Apache Kafka was not running")


@app.command("status")
def status(ctx: typer.Context, brokers: int | None = BrokersOption) -> None:
    """Whether every node runs and answers; exits 1 when one does not."""
    settings, broker = _broker(ctx, brokers, None)
    if not settings.embedded_broker:
        console.print(f"using the Kafka cluster at {settings.kafka_bootstrap_servers}; no embedded broker")
        return
    state = broker.status()
    for node in state.nodes:
        word = "[green]running[/]" if node.joined else "[red]stopped[/]"
        console.print(f"Apache Kafka {node.name.replace('-', ' ')} {word} at 127.0.0.1:{node.port} (data {state.data_dir})")
    if not (state.running and state.answering):
        raise typer.Exit(1)
