"""``edgelake jars``: the JVM jars fetched from Maven Central by the install step."""

from __future__ import annotations


import typer

from edgelake.console import console, reported_errors
from edgelake.jars import fetch as fetch_jars
from edgelake.jars import jar_sets
from edgelake.settings import Settings

app = typer.Typer(
    help="Fetch the JVM jars (Apache Kafka; delta-spark and hadoop-aws for Spark) with Maven from the pinned poms under infra/jars.",
    no_args_is_help=True,
)


@app.command("fetch")
def fetch(ctx: typer.Context, names: list[str] | None = typer.Argument(None, help="Jar sets to fetch (default: all).")) -> None:
    """Copy each jar set's dependencies into EDGELAKE_JARS_DIR once; a changed pom fetches again."""
    settings: Settings = ctx.obj
    with reported_errors():
        for name in names or jar_sets():
            log = settings.jars_path / f"{name}-maven.log"
            fetched = fetch_jars(settings.jars_path, name, log_file=log)
            console.print(f"{name} jars {'fetched into' if fetched else 'already in'} {settings.jars_path / name}")
