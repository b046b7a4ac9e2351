"""``edgelake cluster spark``: a Spark standalone master and workers on loopback, for lake and training jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from edgelake.console import console, reported_errors
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.lake.spark_cluster import SparkCluster

app = typer.Typer(help="Start, stop and inspect a Spark standalone cluster on loopback.", no_args_is_help=True)

WorkersOption = typer.Option(None, "--workers", min=1, help="Workers, one core each (default EDGELAKE_SPARK_CLUSTER_WORKERS, 2).")
PortOption = typer.Option(None, "--port", help="Master port (default EDGELAKE_SPARK_CLUSTER_PORT, 7077); the next ports serve its web UI and the workers.")


def _cluster(ctx: typer.Context, workers: int | None, port: int | None) -> SparkCluster:
    from edgelake.lake.spark_cluster import SparkCluster

    settings: Settings = ctx.obj
    update = {key: value for key, value in (("spark_cluster_workers", workers), ("spark_cluster_port", port)) if value is not None}
    with reported_errors():
        return SparkCluster.from_settings(settings.model_copy(update=update))


@app.command("up")
def up(ctx: typer.Context, workers: int | None = WorkersOption, port: int | None = PortOption) -> None:
    """Start the master and every worker that does not run, and wait until the master lists all of them as alive."""
    cluster = _cluster(ctx, workers, port)
    with reported_errors():
        state = cluster.start()
    console.print(
        f"[green]Spark up[/] at {state.master_url} ({state.alive_workers} workers, pid {', '.join(map(str, state.pids))}, "
        f"web UI {state.web_ui_url}, logs {state.data_dir})",
        soft_wrap=True,
    )
    console.print(f"run on it: edgelake lake build-gold --master {state.master_url}", soft_wrap=True)


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop every worker, then the master."""
    cluster = _cluster(ctx, None, None)
    console.print("Spark stopped" if cluster.stop() else "Spark was not running")


@app.command("status")
def status(ctx: typer.Context, workers: int | None = WorkersOption, port: int | None = PortOption) -> None:
    """Whether the master and every worker run and the master lists the workers as alive; exits 1 when one is not."""
    state = _cluster(ctx, workers, port).status()
    for daemon in state.daemons:
        word = "[green]running[/]" if daemon.running and daemon.registered else "[yellow]not registered[/]" if daemon.running else "[red]stopped[/]"
        console.print(f"Spark {daemon.name} {word} on port {daemon.port}" + (f" (pid {daemon.pid})" if daemon.pid else ""))
    console.print(f"master {state.master_url}, web UI {state.web_ui_url}, logs {state.data_dir}", soft_wrap=True)
    if not state.ready:
        raise typer.Exit(1)
