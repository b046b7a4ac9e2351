"""``edgelake cluster``: engine clusters on loopback, to run lake, training and ingest jobs on more than one worker process."""

from __future__ import annotations

import typer

from edgelake.cli import dask_cluster, spark_cluster

app = typer.Typer(help="Start and stop engine clusters on loopback: Spark standalone, Dask (Beam's DaskRunner).", no_args_is_help=True)
app.add_typer(spark_cluster.app, name="spark")
app.add_typer(dask_cluster.app, name="dask")
