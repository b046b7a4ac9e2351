"""``edgelake bench``: benchmarks measured as ratios against a baseline in the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from edgelake.cli.common import console, reported_errors
from edgelake.settings import Settings

app = typer.Typer(help="Benchmarks, each against a baseline measured in the same run.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON.")
RECORD_OPTION = typer.Option(False, "--record", help="Append the result to bench/RESULTS.md.")
MASTER_OPTION = typer.Option(None, "--master", help="Spark master; default the spark_master setting.")


@app.command("produce")
def produce(
    ctx: typer.Context,
    events: int = typer.Option(100_000, "--events", min=1000, help="Events per measured run."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """The producer API (validated events) against raw kafka-python sends of pre-serialized bytes."""
    from bench import produce as bench_produce

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_produce.run(settings, events)
    report("produce", result, as_json, record)


@app.command("ingest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ingest(
    ctx: typer.Context,
    events: int = typer.Option(200_000, "--events", min=1000, help="Events to produce and ingest."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """``ingest --once`` into a fresh lake against kafka-python fetching the same topic raw. Extra arguments go to Beam."""
    from bench import ingest as bench_ingest

    with reported_errors():
        result = bench_ingest.run(ctx.obj, events, tuple(ctx.args))
    report("ingest", result, as_json, record)


@app.command("sql")
def sql(
    ctx: typer.Context,
    rows: int = typer.Option(1_000_000, "--rows", min=1000, help="Silver transactions (and as many labels) to query."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs of each query on each engine."),
    master: str = MASTER_OPTION,
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Three analytical queries (aggregate, join, window) through ``edgelake sql``'s engine against Spark SQL."""
    from bench import sql as bench_sql

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_sql.run(rows, repeats, master or settings.spark_master)
    report("sql", result, as_json, record)


@app.command("train")
def train(
    ctx: typer.Context,
    rows: int = typer.Option(200_000, "--rows", min=1000, help="Synthetic transactions for the feature job and the fraud model."),
    images: int = typer.Option(20_000, "--images", min=100, help="Fashion-MNIST training frames for the vision model."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    master: str = MASTER_OPTION,
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Rows/s of the Spark card-feature job (against one core) and samples/s of each model's training on this device."""
    from bench import train as bench_train

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_train.run(settings, rows, images, master or settings.spark_master, device)
    report("train", result, as_json, record)


@app.command("api")
def api(
    ctx: typer.Context,
    rates: str = typer.Option("200,500", "--rates", help="Comma-separated request rates (req/s) to measure p50/p99 and errors at."),
    seconds: float = typer.Option(10.0, "--seconds", min=1.0, help="Seconds of load at each rate."),
    search: bool = typer.Option(True, "--search/--no-search", help="Also find each variant's sustainable rate and their ratio."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """/v1/score on a real uvicorn server, loaded open loop at fixed rates, against Keras ``model.predict`` per request."""
    from bench import api as bench_api

    with reported_errors():
        result = bench_api.run(ctx.obj, _rates(rates), seconds, search)
    report("api", result, as_json, record)


@app.command("edge")
def edge(
    ctx: typer.Context,
    model_dir: Optional[Path] = typer.Option(
        None, "--model-dir", help="A directory with vision_float.tflite and vision_int8.tflite; default the production vision model."
    ),
    runs: int = typer.Option(100, "--runs", min=10, help="Timed invocations of each model on each frame."),
    frames: int = typer.Option(500, "--frames", min=1, help="Frames the agent classifies (at 50 a second) while its memory is watched."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Per-frame latency of the int8 vision model against the float one, their size ratio, and a running agent's peak RSS."""
    from bench import edge as bench_edge

    with reported_errors():
        result = bench_edge.run(ctx.obj, model_dir, runs, frames)
    report("edge", result, as_json, record)


def _rates(text: str) -> tuple[int, ...]:
    """``--rates``: comma-separated whole rates of at least 1 request/s."""
    try:
        rates = tuple(int(rate) for rate in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"not comma-separated whole numbers: {text!r}", param_hint="--rates") from None
    if not rates or min(rates) < 1:
        raise typer.BadParameter("rates must be at least 1 request/s", param_hint="--rates")
    return rates


def report(name: str, result: dict[str, Any], as_json: bool, record: bool) -> None:
    """Print a benchmark's result (as one JSON line with ``as_json``) and, with ``record``, append it to bench/RESULTS.md."""
    from bench.results import record_result

    if record:
        record_result(name, result)
    print(json.dumps(result)) if as_json else console.print(result)
