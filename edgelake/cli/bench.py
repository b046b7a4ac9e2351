"""``edgelake bench``: benchmarks measured as ratios against a baseline in the same run."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgelake.console import console, err_console, reported_errors
from edgelake.errors import UserError
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.bench.report import Outcome

app = typer.Typer(help="Benchmarks, each against a baseline measured in the same run.", no_args_is_help=True)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark measures: by default each command's defaults."""

    produce_events: int = 100_000
    ingest_events: int = 200_000
    sql_rows: int = 1_000_000
    sql_repeats: int = 5
    train_rows: int = 1_000_000  # fixed costs (planning, the Delta commit) are a third of a 200,000-row build
    train_runs: int = 3  # per Spark master: warm-up builds, then timed builds (the best counts)
    train_images: int = 20_000
    api_rates: tuple[int, ...] = (200, 500)
    api_seconds: float = 10.0
    edge_runs: int = 100
    edge_frames: int = 500


FULL = Sizes()
# ``bench all --quick``: a few minutes on 2 cores, each still past its benchmark's start-up costs
QUICK = Sizes(
    produce_events=20_000, ingest_events=100_000, sql_rows=100_000, sql_repeats=3, train_rows=50_000, train_runs=1, train_images=5_000,
    api_rates=(500,), api_seconds=2.0, edge_runs=20, edge_frames=100,
)
JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON.")
RECORD_OPTION = typer.Option(False, "--record", help="Append the result to bench/RESULTS.md.")
MASTER_OPTION = typer.Option(None, "--master", help="Spark master; default the spark_master setting.")


@app.command("produce")
def produce(
    ctx: typer.Context,
    events: int = typer.Option(FULL.produce_events, "--events", min=1000, help="Events per measured run."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """The producer API (validated events) against raw kafka-python sends of pre-serialized bytes."""
    from edgelake.bench import produce as bench_produce

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_produce.run(settings, events)
    report("produce", result, as_json, record)


@app.command("ingest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ingest(
    ctx: typer.Context,
    events: int = typer.Option(FULL.ingest_events, "--events", min=1000, help="Events to produce and ingest."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """``ingest --once`` into a fresh lake against kafka-python fetching the same topic raw. Extra arguments go to Beam."""
    from edgelake.bench import ingest as bench_ingest

    with reported_errors():
        result = bench_ingest.run(ctx.obj, events, tuple(ctx.args))
    report("ingest", result, as_json, record)


@app.command("sql")
def sql(
    ctx: typer.Context,
    rows: int = typer.Option(FULL.sql_rows, "--rows", min=1000, help="Silver transactions (and as many labels) to query."),
    repeats: int = typer.Option(FULL.sql_repeats, "--repeats", min=1, help="Timed runs of each query on each engine."),
    master: str = MASTER_OPTION,
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Three analytical queries (aggregate, join, window) through ``edgelake sql``'s engine against Spark SQL."""
    from edgelake.bench import sql as bench_sql

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_sql.run(rows, repeats, master or settings.spark_master)
    report("sql", result, as_json, record)


@app.command("train")
def train(
    ctx: typer.Context,
    rows: int = typer.Option(FULL.train_rows, "--rows", min=1000, help="Synthetic transactions for the feature job and the fraud model."),
    images: int = typer.Option(FULL.train_images, "--images", min=100, help="Fashion-MNIST training frames for the vision model."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    master: str = MASTER_OPTION,
    runs: int = typer.Option(
        FULL.train_runs, "--runs", min=1, help="Warm-up builds, then timed builds, of the card features per Spark master; the best timed one counts.",
    ),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Rows/s of the Spark card-feature job (against one core, and on a standalone cluster of two workers) and samples/s of each
    model's training on this device."""
    from edgelake.bench import train as bench_train

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_train.run(settings, rows, images, master or settings.spark_master, device, runs)
    report("train", result, as_json, record)


@app.command("wide-train")
def wide_train(
    ctx: typer.Context,
    rows: int = typer.Option(600_000, "--rows", min=6_000, help="Rows of the generated wide file (a baseline run takes a sixth of them)."),
    numeric: int = typer.Option(360, "--numeric", min=2, help="Its numeric columns."),
    categorical: int = typer.Option(40, "--categorical", min=2, help="Its text columns."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    master: str = MASTER_OPTION,
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Peak RSS of fraud training on a generated wide file, against its input matrix and a run on a sixth of the rows."""
    from edgelake.bench import wide_train as bench_wide_train

    settings: Settings = ctx.obj
    with reported_errors():
        result = bench_wide_train.run(settings, rows, numeric, categorical, master or settings.spark_master, device)
    report("wide-train", result, as_json, record)


@app.command("api")
def api(
    ctx: typer.Context,
    rates: str = typer.Option(",".join(map(str, FULL.api_rates)), "--rates", help="Comma-separated request rates (req/s) to measure p50/p99 and errors at."),
    seconds: float = typer.Option(FULL.api_seconds, "--seconds", min=1.0, help="Seconds of load at each rate."),
    search: bool = typer.Option(True, "--search/--no-search", help="Also find each variant's sustainable rate and their ratio."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """/v1/score on a real uvicorn server, loaded open loop at fixed rates, against Keras ``model.predict`` per request."""
    from edgelake.bench import api as bench_api

    with reported_errors():
        result = bench_api.run(ctx.obj, _rates(rates), seconds, search)
    report("api", result, as_json, record)


@app.command("edge")
def edge(
    ctx: typer.Context,
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="A directory with vision_float.tflite and vision_int8.tflite; default the production vision model."
    ),
    runs: int = typer.Option(FULL.edge_runs, "--runs", min=10, help="Timed invocations of each model on each frame."),
    frames: int = typer.Option(FULL.edge_frames, "--frames", min=1, help="Frames the agent classifies (at 50 a second) while its memory is watched."),
    as_json: bool = JSON_OPTION,
    record: bool = RECORD_OPTION,
) -> None:
    """Per-frame latency of the int8 vision model against the float one, their size ratio, and a running agent's peak RSS."""
    from edgelake.bench import edge as bench_edge

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
    from edgelake.bench.results import record_result

    if record:
        record_result(name, result)
    print(json.dumps(result)) if as_json else console.print(result)


@dataclass(frozen=True)
class Plan:
    """What ``bench all`` runs every benchmark with."""

    settings: Settings
    sizes: Sizes
    model_dir: Path | None
    scratch: Path


def _produce(plan: Plan) -> dict[str, Any]:
    from edgelake.bench import produce as bench_produce

    return bench_produce.run(plan.settings, plan.sizes.produce_events)


def _ingest(plan: Plan) -> dict[str, Any]:
    from edgelake.bench import ingest as bench_ingest

    return bench_ingest.run(plan.settings, plan.sizes.ingest_events)


def _sql(plan: Plan) -> dict[str, Any]:
    from edgelake.bench import sql as bench_sql

    return bench_sql.run(plan.sizes.sql_rows, plan.sizes.sql_repeats, plan.settings.spark_master)


def _train(plan: Plan) -> dict[str, Any]:
    from edgelake.bench import train as bench_train

    sizes = plan.sizes
    return bench_train.run(plan.settings, sizes.train_rows, sizes.train_images, plan.settings.spark_master, runs=sizes.train_runs)


def _api(plan: Plan) -> dict[str, Any]:
    from edgelake.bench import api as bench_api

    return bench_api.run(plan.settings, plan.sizes.api_rates, plan.sizes.api_seconds)


def _edge(plan: Plan) -> dict[str, Any]:
    from edgelake.bench import edge as bench_edge

    return bench_edge.run_on_any_model(plan.settings, plan.model_dir, plan.sizes.edge_runs, plan.sizes.edge_frames, plan.scratch)


# Every benchmark, in the order ``bench all`` runs them.
RUNNERS: dict[str, Callable[[Plan], dict[str, Any]]] = {
    "produce": _produce, "ingest": _ingest, "sql": _sql, "train": _train, "api": _api, "edge": _edge,
}


@app.command("all")
def run_all(
    ctx: typer.Context,
    out: Path = typer.Option(Path("bench/results"), "--out", help="Directory for results.json, report.md and the plots."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes, for every benchmark in a few minutes; default each command's defaults."),
    only: str | None = typer.Option(None, "--only", help=f"Comma-separated benchmarks to run, of {', '.join(RUNNERS)}; default all."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="The edge benchmark's vision model directory; default the production vision model, else a stand-in trained for the run."
    ),
    record: bool = typer.Option(False, "--record", help="Append each benchmark's result to bench/RESULTS.md."),
) -> None:
    """Every benchmark in turn; then results.json, report.md (each headline figure against its baseline and goal) and plots in --out.

    A failed benchmark is reported and the others still run; the command then exits 1.
    """
    from edgelake.bench.report import write_report

    names = _chosen(only)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-all-") as scratch:
        outcomes = _run_each(names, Plan(ctx.obj, QUICK if quick else FULL, model_dir, Path(scratch)), record)
    with reported_errors():
        written = write_report(outcomes, out, started, quick)
    console.print(f"wrote {', '.join(path.name for path in written)} in {out}")
    if failed := [outcome.name for outcome in outcomes if outcome.error is not None]:
        err_console.print(f"[bold red]failed:[/] {', '.join(failed)} (see {out / 'report.md'})", highlight=False)
        raise typer.Exit(1)


def _chosen(only: str | None) -> list[str]:
    """``--only``'s benchmarks (all without it), in the order ``bench all`` runs them."""
    if only is None:
        return list(RUNNERS)
    names = {name.strip() for name in only.split(",")}
    if unknown := sorted(names - set(RUNNERS)):
        raise typer.BadParameter(f"no benchmark named {', '.join(map(repr, unknown))}; choose from {', '.join(RUNNERS)}", param_hint="--only")
    return [name for name in RUNNERS if name in names]


def _run_each(names: list[str], plan: Plan, record: bool) -> list[Outcome]:
    """Run the benchmarks in turn, showing which one runs and for how long; each one's outcome."""
    from edgelake.bench.results import record_result

    outcomes = []
    with Progress(SpinnerColumn(finished_text="•"), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console) as progress:
        for name in names:
            task = progress.add_task(f"bench {name}", total=1)
            outcome = _measured(name, plan)
            status = "ok" if outcome.error is None else "[red]failed[/]"
            progress.update(task, completed=1, description=f"bench {name}: {status}")
            if record and outcome.result is not None:
                record_result(name, outcome.result)
            outcomes.append(outcome)
    return outcomes


def _measured(name: str, plan: Plan) -> Outcome:
    """Run one benchmark: its result, or the error that stopped it, and its wall seconds."""
    from edgelake.bench.report import Outcome

    started = time.perf_counter()
    try:
        result = RUNNERS[name](plan)
    except UserError as error:
        return Outcome(name, _seconds_since(started), error=str(error))
    except Exception as error:  # noqa: BLE001 - one benchmark's failure must not stop the others
        log.exception("bench %s failed", name)
        return Outcome(name, _seconds_since(started), error=f"{type(error).__name__}: {error}")
    return Outcome(name, _seconds_since(started), result=result)


def _seconds_since(started: float) -> float:
    return round(time.perf_counter() - started, 1)
