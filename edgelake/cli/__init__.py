"""The ``edgelake`` command: one place that wires every stage into commands.

Stage modules are imported inside the commands so that ``edgelake --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from edgelake.cli import bench, broker, config, demo, edge, ingest, jars, keys, lake, models, produce, quarantine, schemas, serve, sql, train
from edgelake.logs import configure_logging, divert_native_output
from edgelake.settings import Settings

app = typer.Typer(
    name="edgelake",
    help="Hybrid edge-cloud data lake: Kafka -> Beam -> Delta Lake -> Spark/TensorFlow -> TFLite at the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# Commands that load TensorFlow, Spark or Beam, whose native code and JVMs write to the terminal on their own.
NOISY_COMMANDS = {"demo", "train", "lake", "ingest", "bench"}


@app.callback()
def _root(ctx: typer.Context) -> None:
    settings = Settings()
    if ctx.invoked_subcommand in NOISY_COMMANDS and sys.stderr.isatty():
        divert_native_output(settings.data_dir / "logs" / "native.log")
    configure_logging(settings)
    ctx.obj = settings


app.add_typer(config.app, name="config")
app.add_typer(broker.app, name="broker")
app.add_typer(jars.app, name="jars")
app.add_typer(schemas.app, name="schemas")
app.add_typer(produce.app, name="produce")
app.add_typer(ingest.app, name="ingest")
app.add_typer(lake.app, name="lake")
app.add_typer(quarantine.app, name="quarantine")
app.add_typer(bench.app, name="bench")
app.add_typer(models.app, name="models")
app.add_typer(train.app, name="train")
app.add_typer(keys.app, name="keys")
app.command("demo")(demo.demo)
app.command("sql")(sql.sql)

app.command("serve")(serve.serve)
app.add_typer(edge.app, name="edge")


def main() -> None:
    app()
