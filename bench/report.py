"""``edgelake bench all``'s report: each benchmark's headline figures against its baseline and goal.

A headline is one figure of a benchmark's result, with the baseline figure it is compared
with and the goal it should meet (bench/RESULTS.md states them). Its ratio is its
advantage over the baseline: value ÷ baseline where higher is better, baseline ÷ value
where lower is, so above 1 edgelake is ahead whichever way the figure points.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgelake.bench.results import machine

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Result = dict[str, Any]
Getter = Callable[[Result], float]

GOAL_RATE = "500"  # req/s at which the API's latency goal is set
RATIOS_PNG = "ratios.png"
LOG_SCALE_SPREAD = 30  # a bar chart whose bars differ more than this many times has a log scale


@dataclass(frozen=True)
class Goal:
    """A bound on a headline's value (in its unit) or on its ratio to the baseline."""

    on: Literal["value", "ratio"]
    bound: Literal["at least", "at most"]
    limit: float

    def met(self, value: float, ratio: float | None) -> bool | None:
        """Whether the goal is met; None when the bounded figure is not known."""
        figure = value if self.on == "value" else ratio
        if figure is None:
            return None
        return figure >= self.limit if self.bound == "at least" else figure <= self.limit

    def text(self, unit: str) -> str:
        sign = "≥" if self.bound == "at least" else "≤"
        return f"{sign} {self.limit:g} {unit}" if self.on == "value" else f"ratio {sign} {self.limit:g}"


@dataclass(frozen=True)
class Headline:
    """How one headline figure, its baseline and its goal are read from a benchmark's result."""

    figure: str
    unit: str
    better: Literal["higher", "lower"]
    value: Getter
    baseline: str | None = None
    baseline_value: Getter | None = None
    goal: Goal | None = None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's headlines, and what a run of it measured (sizes, model, machine load) as its result states it."""

    headlines: tuple[Headline, ...]
    setup: Callable[[Result], str]


@dataclass(frozen=True)
class Reading:
    """One headline as measured in one run: a row of report.md's table."""

    benchmark: str
    figure: str
    unit: str
    value: float
    baseline: str | None
    baseline_value: float | None
    ratio: float | None
    goal: Goal | None
    met: bool | None

    def goal_text(self) -> str | None:
        return self.goal.text(self.unit) if self.goal else None


@dataclass(frozen=True)
class Outcome:
    """One benchmark's run: its result, or the error that stopped it, and its wall seconds."""

    name: str
    seconds: float
    result: Result | None = None
    error: str | None = None


def at(*path: str) -> Getter:
    """The number at ``path`` of nested keys in a result."""

    def get(result: Result) -> float:
        value: Any = result  # a nested value of the JSON result
        for key in path:
            value = value[key]
        return float(value)

    return get


def query(name: str, engine: Literal["embedded", "spark"]) -> Getter:
    """A query's p50 seconds on one engine, from the sql benchmark's result."""
    return lambda result: next(float(q[f"{engine}_p50_s"]) for q in result["queries"] if q["name"] == name)


BENCHMARKS: dict[str, Benchmark] = {
    "produce": Benchmark(
        (
            Headline(
                "producer API throughput", "events/s", "higher", at("events_per_s"),
                "raw kafka-python sends", at("baseline_events_per_s"), Goal("ratio", "at least", 0.7),
            ),
        ),
        lambda r: f"{r['events']:,} events",
    ),
    "ingest": Benchmark(
        (
            Headline(
                "ingest --once throughput", "events/s", "higher", at("events_per_s"),
                "raw librdkafka fetch", at("raw_consume_confluent_events_per_s"), Goal("ratio", "at least", 0.5),
            ),
            Headline(
                "ingest --once on ULB transactions", "events/s", "higher", at("events_per_s"),
                "raw kafka-python fetch", at("raw_consume_events_per_s"), Goal("value", "at least", 100_000),
            ),
        ),
        lambda r: f"{r['events']:,} events",
    ),
    "sql": Benchmark(
        (
            Headline(
                "aggregate query p50", "s", "lower", query("aggregate", "embedded"),
                "Spark SQL", query("aggregate", "spark"), Goal("value", "at most", 0.3),
            ),
            Headline("p50 over all queries", "s", "lower", at("embedded_p50_s"), "Spark SQL", at("spark_p50_s")),
        ),
        lambda r: f"{r['rows']:,} rows, {len(r['queries'])} queries",
    ),
    "train": Benchmark(
        (
            Headline(
                "card-feature job", "rows/s", "higher", at("feature_rows_per_s"),
                "the same job on one core", at("feature_rows_per_s_one_core"), Goal("ratio", "at least", 1.6),
            ),
            Headline("card-feature job on a standalone cluster", "rows/s", "higher", at("feature_rows_per_s_standalone")),
            Headline("fraud towers training (samples fed to every tower)", "samples/s", "higher", at("fraud_samples_per_s")),
            Headline("vision CNN training", "frames/s", "higher", at("vision_samples_per_s")),
        ),
        lambda r: f"{r['feature_rows']:,} rows, {r['device']}, Spark {r['spark_master']}",
    ),
    "api": Benchmark(
        (
            Headline(
                f"/v1/score p99 at {GOAL_RATE} req/s", "ms", "lower", at("score", GOAL_RATE, "p99_ms"),
                "Keras predict per request", at("baseline", GOAL_RATE, "p99_ms"), Goal("value", "at most", 10),
            ),
            Headline(
                f"/v1/score errors at {GOAL_RATE} req/s", "errors", "lower", at("score", GOAL_RATE, "errors"),
                "Keras predict per request", at("baseline", GOAL_RATE, "errors"), Goal("value", "at most", 0),
            ),
            Headline(
                f"p99 added by shadow scoring at {GOAL_RATE} req/s", "ms", "lower", at("shadow", "added_p99_ms", GOAL_RATE),
                goal=Goal("value", "at most", 1),
            ),
            Headline(
                "sustainable throughput", "req/s", "higher", at("sustainable_rps", "score"),
                "Keras predict per request", at("sustainable_rps", "baseline"), Goal("ratio", "at least", 10),
            ),
        ),
        lambda r: f"rates {', '.join(r['score'])} req/s, load average {r['load_average']}",
    ),
    "edge": Benchmark(
        (
            Headline(
                "int8 latency a frame", "ms", "lower", at("int8_ms"),
                "float model", at("float_ms"), Goal("ratio", "at least", 1),
            ),
            Headline(
                "int8 model size", "bytes", "lower", at("int8_bytes"),
                "float model", at("float_bytes"), Goal("ratio", "at least", 3.5),
            ),
            Headline("agent peak RSS", "MB", "lower", at("agent_rss_mb"), goal=Goal("value", "at most", 150)),
        ),
        lambda r: f"model: {r['model']}; {r['runtime']}, {r['agent_frames']} agent frames, load average {r['load_average']}",
    ),
}


def readings(name: str, result: Result) -> list[Reading]:
    """The benchmark's headlines as ``result`` measured them."""
    return [_reading(name, headline, result) for headline in BENCHMARKS[name].headlines]


def _reading(name: str, headline: Headline, result: Result) -> Reading:
    value = headline.value(result)
    baseline = headline.baseline_value(result) if headline.baseline_value else None
    ratio = advantage(value, baseline, headline.better)
    goal = headline.goal
    met = goal.met(value, ratio) if goal else None
    return Reading(name, headline.figure, headline.unit, value, headline.baseline, baseline, ratio, goal, met)


def advantage(value: float, baseline: float | None, better: Literal["higher", "lower"]) -> float | None:
    """How many times better than ``baseline`` ``value`` is; None without a baseline or when either is 0."""
    if baseline is None or value == 0 or baseline == 0:
        return None
    return round(value / baseline if better == "higher" else baseline / value, 3)


def write_report(outcomes: Sequence[Outcome], out: Path, started: datetime, quick: bool) -> list[Path]:
    """results.json, report.md and the plots of one ``bench all`` run, in ``out``; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    measured = [reading for outcome in outcomes if outcome.result is not None for reading in readings(outcome.name, outcome.result)]
    results = out / "results.json"
    results.write_text(json.dumps(results_document(outcomes, measured, started, quick), indent=2) + "\n")
    plots = write_plots(measured, out)
    report = out / "report.md"
    report.write_text(markdown(outcomes, measured, [plot.name for plot in plots], started, quick))
    return [results, report, *plots]


def results_document(outcomes: Sequence[Outcome], measured: Sequence[Reading], started: datetime, quick: bool) -> dict[str, Any]:
    """Everything a run measured: each benchmark's full result (or error) and wall seconds, and the headlines."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": "quick" if quick else "full",
        "benchmarks": {o.name: {"seconds": o.seconds, "result": o.result, "error": o.error} for o in outcomes},
        "headlines": [{**asdict(reading), "goal": reading.goal_text()} for reading in measured],
    }


def markdown(outcomes: Sequence[Outcome], measured: Sequence[Reading], plots: Sequence[str], started: datetime, quick: bool) -> str:
    """report.md: the run's header, its failures, the headline table, each benchmark's setup and seconds, the plots."""
    sizes = "quick sizes (`edgelake bench all --quick`)" if quick else "full sizes (each command's defaults)"
    failures = [f"- **{o.name} failed:** {_one_line(o.error)}" for o in outcomes if o.error is not None]
    lines = [
        "# Benchmark report",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC · {machine()} · {sizes} · {sum(o.seconds for o in outcomes):,.0f} s in all",
        "",
        *([*failures, ""] if failures else []),
        "| benchmark | figure | value | baseline | baseline value | ratio | goal | met |",
        "|---|---|---|---|---|---|---|---|",
        *(_row(reading) for reading in measured),
        "",
        "Ratio: the figure's advantage over its baseline (value ÷ baseline where higher is better, "
        "baseline ÷ value where lower is); above 1, edgelake is ahead.",
        "",
        "| benchmark | setup | seconds | outcome |",
        "|---|---|---|---|",
        *(_run_row(outcome) for outcome in outcomes),
        "",
        *(f"![{Path(plot).stem}]({plot})" for plot in plots),
    ]
    return "\n".join(lines) + "\n"


def _row(reading: Reading) -> str:
    cells = (
        reading.benchmark, f"{reading.figure} ({reading.unit})", _number(reading.value), reading.baseline or "—",
        _number(reading.baseline_value), _ratio(reading.ratio), reading.goal_text() or "—", _met(reading.met),
    )
    return "| " + " | ".join(_cell(text) for text in cells) + " |"


def _run_row(outcome: Outcome) -> str:
    setup = BENCHMARKS[outcome.name].setup(outcome.result) if outcome.result is not None else "—"
    status = "ok" if outcome.error is None else "failed"
    return f"| {outcome.name} | {_cell(setup)} | {outcome.seconds:,.1f} | {status} |"


def _number(number: float | None) -> str:
    if number is None:
        return "—"
    return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:.4g}"


def _ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:g}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[met]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def write_plots(measured: Sequence[Reading], out: Path) -> list[Path]:
    """One bar chart per benchmark (each headline against its baseline and value goal) and one of every ratio
    against its goal; the PNGs written."""
    benchmarks = list(dict.fromkeys(reading.benchmark for reading in measured))
    plots = [_benchmark_plot(name, [r for r in measured if r.benchmark == name], out / f"{name}.png") for name in benchmarks]
    compared = [(reading, reading.ratio) for reading in measured if reading.ratio is not None]
    return [*plots, _ratios_plot(compared, out / RATIOS_PNG)] if compared else plots


def _benchmark_plot(name: str, measured: Sequence[Reading], path: Path) -> Path:
    """Bars of each headline's value and baseline, a dashed line at a value goal."""
    figure, panels = _figure(len(measured), (3.6 * len(measured), 3.4))
    for axes, reading in zip(panels, measured, strict=True):
        labels, values = ["edgelake"], [reading.value]
        if reading.baseline_value is not None:
            labels.append(reading.baseline or "baseline")
            values.append(reading.baseline_value)
        bars = axes.bar(range(len(values)), values, color=["tab:blue", "tab:gray"][: len(values)])
        axes.bar_label(bars, [_number(value) for value in values], fontsize=8)
        axes.margins(y=0.15)
        axes.set_xticks(range(len(values)), [_wrapped(label) for label in labels], fontsize=8)
        spread = min(values) > 0 and max(values) / min(values) > LOG_SCALE_SPREAD
        axes.set_yscale("log" if spread else "linear")
        axes.set_ylabel(f"{reading.unit} (log scale)" if spread else reading.unit)
        axes.set_title(_wrapped(reading.figure), fontsize=9)
        if reading.goal and reading.goal.on == "value":
            axes.axhline(reading.goal.limit, color="tab:red", linestyle="--", linewidth=1, label=f"goal {reading.goal_text()}")
            axes.legend(fontsize=7)
    figure.suptitle(f"bench {name}")
    return _saved(figure, path)


def _ratios_plot(compared: Sequence[tuple[Reading, float]], path: Path) -> Path:
    """Each headline's ratio to its baseline on a log scale, coloured by whether its goal is met, with ratio goals marked."""
    from matplotlib.ticker import ScalarFormatter

    figure, (axes,) = _figure(1, (8, 0.45 * len(compared) + 1.6))
    measured, ratios = [reading for reading, _ in compared], [ratio for _, ratio in compared]
    rows = range(len(measured))
    colours = [{True: "tab:green", False: "tab:red", None: "tab:gray"}[r.met] for r in measured]
    bars = axes.barh(rows, ratios, color=colours)
    axes.bar_label(bars, [f"{ratio:.3g}×" for ratio in ratios], fontsize=8, padding=2)
    axes.set_yticks(rows, [f"{r.benchmark}: {r.figure}" for r in measured], fontsize=8)
    axes.invert_yaxis()
    goals = [(row, r.goal.limit) for row, r in zip(rows, measured, strict=True) if r.goal and r.goal.on == "ratio"]
    axes.scatter([limit for _, limit in goals], [row for row, _ in goals], marker="|", s=300, color="black", label="ratio goal", zorder=3)
    axes.set_xscale("log")
    shown = [*ratios, *(limit for _, limit in goals), 1.0]
    axes.set_xlim(min(shown) / 2, max(shown) * 3)
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.axvline(1, color="black", linewidth=1)
    axes.set_xlabel("× the baseline (log scale)")
    axes.set_title("Advantage over the baseline; green: goal met, red: missed, grey: no goal", fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    return _saved(figure, path)


def _figure(panels: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A matplotlib figure on the Agg canvas with ``panels`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def _saved(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _wrapped(text: str, width: int = 22) -> str:
    return "\n".join(textwrap.wrap(text, width))
