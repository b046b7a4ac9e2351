"""``edgelake bench``: benchmarks measured as ratios against a baseline in the same run."""

from __future__ import annotations

import json

import typer

from edgelake.cli.common import console, not_built, reported_errors
from edgelake.settings import Settings

app = typer.Typer(help="Benchmarks, each against a baseline measured in the same run.", no_args_is_help=True)


@app.command("produce")
def produce(
    ctx: typer.Context,
    events: int = typer.Option(100_000, "--events", min=1000, help="Events per measured run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    record: bool = typer.Option(False, "--record", help="Append the result to bench/RESULTS.md."),
) -> None:
    """The producer API (validated events) against raw kafka-python sends of pre-serialized bytes."""
    from bench import produce as bench_produce
    from bench.results import record_result

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_produce.run(settings, events)
    if record:
        record_result("produce", result)
    print(json.dumps(result)) if as_json else console.print(result)


@app.command("ingest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ingest(
    ctx: typer.Context,
    events: int = typer.Option(200_000, "--events", min=1000, help="Events to produce and ingest."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    record: bool = typer.Option(False, "--record", help="Append the result to bench/RESULTS.md."),
) -> None:
    """``ingest --once`` into a fresh lake against kafka-python fetching the same topic raw. Extra arguments go to Beam."""
    from bench import ingest as bench_ingest
    from bench.results import record_result

    with reported_errors():
        result = bench_ingest.run(ctx.obj, events, tuple(ctx.args))
    if record:
        record_result("ingest", result)
    print(json.dumps(result)) if as_json else console.print(result)


@app.command("sql")
def sql(
    ctx: typer.Context,
    rows: int = typer.Option(1_000_000, "--rows", min=1000, help="Silver transactions (and as many labels) to query."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs of each query on each engine."),
    master: str = typer.Option(None, "--master", help="Spark master; default the spark_master setting."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    record: bool = typer.Option(False, "--record", help="Append the result to bench/RESULTS.md."),
) -> None:
    """Three analytical queries (aggregate, join, window) through ``edgelake sql``'s engine against Spark SQL."""
    from bench import sql as bench_sql
    from bench.results import record_result

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_sql.run(rows, repeats, master or settings.spark_master)
    if record:
        record_result("sql", result)
    print(json.dumps(result)) if as_json else console.print(result)


not_built(app, "train", "Feature job and training throughput (issue #5).")
not_built(app, "api", "Scoring latency against a naive baseline (issue #6).")
not_built(app, "edge", "Edge inference latency, size and memory (issue #7).")
