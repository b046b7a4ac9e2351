"""The ``edgelake`` command: one place that wires every stage into commands.

Stage modules are imported inside the commands so that ``edgelake --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from edgelake.cli import audit, bench, broker, cluster, config, demo, edge, ingest, jars, keys, lake, models, produce, quarantine, schemas, serve, sql, train
from edgelake.console import err_console
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
# main()'s context object: this process is the edgelake program, so its file descriptors are the command's to redirect
# (not so when a caller, such as a test's CliRunner, invokes ``app`` in its own process).
AS_PROGRAM = "edgelake program"
VERBOSE_OPTION = typer.Option(
    False, "--verbose", help="Show what TensorFlow, Spark and Beam print themselves; by default it goes to <data dir>/logs/native.log."
)


@app.callback()
def _root(ctx: typer.Context, verbose: bool = VERBOSE_OPTION) -> None:
    settings = Settings()
    if ctx.obj == AS_PROGRAM and ctx.invoked_subcommand in NOISY_COMMANDS and not verbose and not _shows_help(ctx.invoked_subcommand):
        log_file = settings.data_dir / "logs" / "native.log"
        divert_native_output(log_file)
        err_console.print(f"TensorFlow, Spark and Beam log to {log_file} (--verbose shows them here)", style="dim", highlight=False, soft_wrap=True)
    configure_logging(settings)
    ctx.obj = settings


def _shows_help(command: str) -> bool:
    """Whether the program's command line only asks for help: ``--help``, or a command group without its command."""
    args = sys.argv[1:]
    return "--help" in args or (args[-1:] == [command] and command in {group.name for group in app.registered_groups})


app.add_typer(config.app, name="config")
app.add_typer(broker.app, name="broker")
app.add_typer(cluster.app, name="cluster")
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
app.add_typer(audit.app, name="audit")
app.command("demo")(demo.demo)
app.command("sql")(sql.sql)

app.command("serve")(serve.serve)
app.add_typer(edge.app, name="edge")


def main() -> None:
    """The ``edgelake`` program."""
    app(obj=AS_PROGRAM)
