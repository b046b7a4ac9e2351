"""``edgelake cluster``: engine clusters on loopback, to run lake, training and ingest jobs on more than one worker process.

``spark`` is a Spark standalone master with workers (``lake.spark_cluster``); ``dask`` is a Dask
scheduler with workers for Beam's DaskRunner (``ingest.dask_cluster``). Both take the same commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import typer

from edgelake.console import console, reported_errors
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.daemons import ClusterStatus

app = typer.Typer(help="Start and stop engine clusters on loopback: Spark standalone, Dask (Beam's DaskRunner).", no_args_is_help=True)


class _Cluster(Protocol):
    def start(self) -> ClusterStatus: ...
    def stop(self) -> bool: ...
    def status(self) -> ClusterStatus: ...


@dataclass(frozen=True)
class _Kind:
    """What tells one kind of cluster's commands from the other's."""

    title: str
    help: str
    make: Callable[[Settings], _Cluster]
    workers_setting: str
    port_setting: str
    port_help: str
    next_step: str  # what to run on it, given its address


def _spark(settings: Settings) -> _Cluster:
    from edgelake.lake.spark_cluster import SparkCluster

    return SparkCluster.from_settings(settings)


def _dask(settings: Settings) -> _Cluster:
    from edgelake.ingest.dask_cluster import DaskCluster

    return DaskCluster.from_settings(settings)


def _commands(kind: _Kind) -> typer.Typer:
    """``up``, ``down`` and ``status`` for one kind of cluster."""
    group = typer.Typer(help=kind.help, no_args_is_help=True)
    workers_option = typer.Option(None, "--workers", min=1, help=f"Worker processes (default EDGELAKE_{kind.workers_setting.upper()}, 2).")
    port_option = typer.Option(None, "--port", help=kind.port_help)

    def cluster(ctx: typer.Context, workers: int | None, port: int | None) -> _Cluster:
        settings: Settings = ctx.obj
        update = {key: value for key, value in ((kind.workers_setting, workers), (kind.port_setting, port)) if value is not None}
        with reported_errors():
            return kind.make(settings.model_copy(update=update))

    @group.command("up")
    def up(ctx: typer.Context, workers: int | None = workers_option, port: int | None = port_option) -> None:
        """Start the leader and every worker that does not run, and wait until every worker has joined."""
        with reported_errors():
            state = cluster(ctx, workers, port).start()
        pids = ", ".join(map(str, state.pids))
        console.print(f"[green]{kind.title} up[/] at {state.address} ({state.joined_workers} workers, pid {pids}, logs {state.data_dir})", soft_wrap=True)
        console.print(kind.next_step.format(address=state.address), soft_wrap=True)

    @group.command("down")
    def down(ctx: typer.Context, port: int | None = port_option) -> None:
        """Stop every worker, then the leader."""
        console.print(f"{kind.title} stopped" if cluster(ctx, None, port).stop() else f"{kind.title} was not running")

    @group.command("status")
    def status(ctx: typer.Context, workers: int | None = workers_option, port: int | None = port_option) -> None:
        """Whether the leader and every worker run and have joined; exits 1 when one has not."""
        state = cluster(ctx, workers, port).status()
        for daemon in state.daemons:
            word = "[green]running[/]" if daemon.joined else "[yellow]running, not joined[/]" if daemon.running else "[red]stopped[/]"
            where = f" on port {daemon.port}" if daemon.port is not None else ""
            console.print(f"{kind.title} {daemon.name} {word}{where}" + (f" (pid {daemon.pid})" if daemon.pid else ""))
        console.print(f"address {state.address}, logs {state.data_dir}", soft_wrap=True)
        if not state.ready:
            raise typer.Exit(1)

    return group


SPARK = _Kind(
    "Spark", "A Spark standalone master and workers (one core each), for lake and training jobs.", _spark,
    "spark_cluster_workers", "spark_cluster_port",
    "Master port (default EDGELAKE_SPARK_CLUSTER_PORT, 7077); the next ports serve its web UI and the workers.",
    "run on it: edgelake lake build-gold --master {address}",
)
DASK = _Kind(
    "Dask", "A Dask scheduler and workers (one thread each), for ingest on Beam's DaskRunner.", _dask,
    "dask_workers", "dask_scheduler_port", "Scheduler port (default EDGELAKE_DASK_SCHEDULER_PORT, 8786).",
    "ingest on it: edgelake ingest run --runner DaskRunner --dask_client_address={address}",
)
app.add_typer(_commands(SPARK), name="spark")
app.add_typer(_commands(DASK), name="dask")
