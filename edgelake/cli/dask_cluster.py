"""``edgelake cluster dask``: a Dask scheduler and workers on loopback, for ingest on Beam's DaskRunner."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from edgelake.console import console, reported_errors
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.ingest.dask_cluster import DaskCluster

app = typer.Typer(help="Start, stop and inspect a Dask cluster on loopback (Beam's DaskRunner).", no_args_is_help=True)

WorkersOption = typer.Option(None, "--workers", min=1, help="Worker processes (default EDGELAKE_DASK_WORKERS, 2).")
PortOption = typer.Option(None, "--port", help="Scheduler port (default EDGELAKE_DASK_SCHEDULER_PORT, 8786).")


def _cluster(ctx: typer.Context, workers: int | None, port: int | None) -> DaskCluster:
    from edgelake.ingest.dask_cluster import DaskCluster

    settings: Settings = ctx.obj
    update = {key: value for key, value in (("dask_workers", workers), ("dask_scheduler_port", port)) if value is not None}
    with reported_errors():
        return DaskCluster.from_settings(settings.model_copy(update=update))


@app.command("up")
def up(ctx: typer.Context, workers: int | None = WorkersOption, port: int | None = PortOption) -> None:
    """Start the scheduler and every worker that does not run (one thread each), and wait until all are connected."""
    cluster = _cluster(ctx, workers, port)
    with reported_errors():
        state = cluster.start()
    console.print(
        f"[green]Dask up[/] at {state.address} ({len(state.processes) - 1} workers, pid {', '.join(map(str, state.pids))}, "
        f"logs {state.data_dir})"
    )
    console.print(f"ingest on it: edgelake ingest run --runner DaskRunner --dask_client_address={state.address}", soft_wrap=True)


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop the scheduler and every worker."""
    cluster = _cluster(ctx, None, None)
    console.print("Dask stopped" if cluster.stop() else "Dask was not running")


@app.command("status")
def status(ctx: typer.Context, workers: int | None = WorkersOption) -> None:
    """Whether the scheduler and every worker run and are connected; exits 1 when one is not."""
    state = _cluster(ctx, workers, None).status()
    for process in state.processes:
        word = "[green]running[/]" if process.running and process.connected else "[yellow]not connected[/]" if process.running else "[red]stopped[/]"
        console.print(f"Dask {process.name} {word}" + (f" (pid {process.pid})" if process.pid else ""))
    console.print(f"scheduler address {state.address}, logs {state.data_dir}")
    if not state.ready:
        raise typer.Exit(1)
