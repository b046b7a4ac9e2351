"""``edgelake bench all``: real benchmarks at quick sizes into results.json, report.md and plots, a failed one
reported beside them; and the report rendered from each benchmark's recorded result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgelake.bench.report import BENCHMARKS, Outcome, write_report
from edgelake.broker import EmbeddedBroker
from edgelake.cli.bench import RUNNERS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One result of each benchmark as bench/RESULTS.md recorded it (ingest's missing both its goals).
RECORDED: dict[str, dict[str, Any]] = {
    "produce": {"events": 100000, "seconds": 3.054, "events_per_s": 32744.0, "baseline_events_per_s": 45745.2, "ratio": 0.716},
    "ingest": {
        "events": 200000, "seconds": 6.05, "events_per_s": 33055.2, "raw_consume_events_per_s": 102224.4,
        "raw_consume_confluent_events_per_s": 147119.1, "ratio": 0.225, "ratio_to_kafka_python": 0.323,
    },
    "sql": {
        "rows": 1000000,
        "queries": [
            {"name": "aggregate", "result_rows": 12, "embedded_p50_s": 0.048, "spark_p50_s": 0.6126},
            {"name": "join", "result_rows": 12, "embedded_p50_s": 0.2094, "spark_p50_s": 1.8533},
            {"name": "window", "result_rows": 81, "embedded_p50_s": 0.1515, "spark_p50_s": 1.1123},
        ],
        "embedded_p50_s": 0.1515, "spark_p50_s": 1.1123, "ratio": 7.34,
    },
    "train": {
        "device": "default strategy (CPU, float32)", "spark_master": "local[*]", "feature_rows": 200000, "feature_rows_per_s": 55520.7,
        "feature_rows_per_s_one_core": 56829.5, "feature_ratio": 0.98, "feature_rows_per_s_standalone": 41200.5,
        "fraud_samples_per_s": 187400.3, "vision_samples_per_s": 4854.4,
    },
    "api": {
        "score": {"200": {"p50_ms": 1.92, "p99_ms": 3.01, "errors": 0}, "500": {"p50_ms": 1.61, "p99_ms": 3.21, "errors": 0}},
        "baseline": {"200": {"p50_ms": 1000.83, "p99_ms": 5676.92, "errors": 1981}, "500": {"p50_ms": 1000.71, "p99_ms": 4831.56, "errors": 4981}},
        "shadow": {
            "rounds": 3, "without": {"200": {"p50_ms": 1.9, "p99_ms": 3.0, "errors": 0}, "500": {"p50_ms": 1.6, "p99_ms": 3.2, "errors": 0}},
            "with": {"200": {"p50_ms": 2.1, "p99_ms": 3.4, "errors": 0}, "500": {"p50_ms": 1.8, "p99_ms": 3.59, "errors": 0}},
            "added_p99_ms": {"200": 0.4, "500": 0.39},
        },
        "sustainable_rps": {"score": 1000, "baseline": 17}, "throughput_ratio": 58.8, "load_average": 3.49,
    },
    "edge": {
        "float_ms": 0.0284, "int8_ms": 0.0139, "size_ratio": 3.75, "agent_rss_mb": 102.1, "float_bytes": 428016, "int8_bytes": 114216,
        "runtime": "ai_edge_litert", "model": "vision v1", "agent_frames": 500, "agent_seconds": 11.32, "load_average": 1.2,
    },
}


def table_rows(report: str) -> dict[tuple[str, str], list[str]]:
    """report.md's headline table: each row's cells by (benchmark, figure)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines() if line.startswith("| ")]
    return {(cells[0], cells[1]): cells for cells in rows if len(cells) == 8 and cells[0] != "benchmark"}


def test_bench_all_quick_reports_every_headline_and_the_benchmark_that_failed(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    out, no_model = tmp_path / "results", tmp_path / "no-model"
    no_model.mkdir()
    env = {
        **os.environ, "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}-",
        "EDGELAKE_DATA_DIR": str(tmp_path / "data"), "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake"), "EDGELAKE_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable, "-m", "edgelake", "bench", "all", "--quick", "--only", "sql,edge,produce", "--model-dir", str(no_model), "--out", str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)

    assert result.returncode == 1, result.stderr
    assert "failed: edge" in result.stderr
    document = json.loads((out / "results.json").read_text())
    assert list(document["benchmarks"]) == ["produce", "sql", "edge"]  # in bench all's order
    produce, sql, edge = (document["benchmarks"][name] for name in ("produce", "sql", "edge"))
    assert produce["error"] is None and produce["result"]["events"] == 20_000 and produce["result"]["ratio"] > 0
    assert sql["error"] is None and sql["result"]["rows"] == 100_000 and sql["result"]["ratio"] > 0
    assert edge["result"] is None and "lacks vision_float.tflite" in edge["error"]
    assert all(entry["seconds"] > 0 for entry in document["benchmarks"].values())
    assert document["date"].startswith(datetime.now(UTC).strftime("%Y-")) and "cores" in document["machine"]
    headlines = [(h["benchmark"], h["figure"]) for h in document["headlines"]]
    assert headlines == [("produce", "producer API throughput"), ("sql", "aggregate query p50"), ("sql", "p50 over all queries")]

    report = (out / "report.md").read_text()
    rows = table_rows(report)
    for headline in document["headlines"]:
        cells = rows[(headline["benchmark"], f"{headline['figure']} ({headline['unit']})")]
        assert float(cells[5]) == pytest.approx(headline["ratio"], rel=0.01) and headline["ratio"] > 0
    assert f"- **edge failed:** {no_model} lacks vision_float.tflite" in report
    for name in ("produce.png", "sql.png", "ratios.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE) and (out / name).stat().st_size > 1000
        assert f"]({name})" in report


def test_an_unknown_benchmark_is_a_usage_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "edgelake", "bench", "all", "--only", "produce,nope", "--out", str(tmp_path / "results")]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 2
    assert "no benchmark named 'nope'; choose from produce, ingest, sql, train, api, edge" in result.stderr
    assert not (tmp_path / "results").exists()


def test_every_benchmark_bench_all_runs_has_its_headlines() -> None:
    assert list(RUNNERS) == list(BENCHMARKS)


def test_the_report_compares_each_recorded_result_with_its_baseline_and_goal(tmp_path: Path) -> None:
    outcomes = [Outcome(name, 1.5, result=result) for name, result in RECORDED.items()]
    written = write_report(outcomes, tmp_path, datetime(2026, 11, 23, 12, 0, tzinfo=UTC), quick=False)

    assert {path.name for path in written} == {"results.json", "report.md", "ratios.png", *(f"{name}.png" for name in RECORDED)}
    rows = table_rows((tmp_path / "report.md").read_text())
    assert len(rows) == sum(len(benchmark.headlines) for benchmark in BENCHMARKS.values())
    produce = rows[("produce", "producer API throughput (events/s)")]
    assert produce[2:] == ["32,744", "raw kafka-python sends", "45,745", "0.716", "ratio ≥ 0.7", "yes"]
    assert rows[("ingest", "ingest --once throughput (events/s)")][4:] == ["147,119", "0.225", "ratio ≥ 0.5", "**no**"]
    assert rows[("ingest", "ingest --once on ULB transactions (events/s)")][6:] == ["≥ 100000 events/s", "**no**"]
    assert rows[("sql", "aggregate query p50 (s)")][2:] == ["0.048", "Spark SQL", "0.6126", "12.763", "≤ 0.3 s", "yes"]
    assert rows[("train", "fraud towers training (samples fed to every tower) (samples/s)")][3:] == ["—", "—", "—", "—", "—"]
    assert rows[("api", "/v1/score p99 at 500 req/s (ms)")][5:] == ["1505.16", "≤ 10 ms", "yes"]
    assert rows[("api", "/v1/score errors at 500 req/s (errors)")][2:] == ["0", "Keras predict per request", "4,981", "—", "≤ 0 errors", "yes"]
    assert rows[("api", "sustainable throughput (req/s)")][5:] == ["58.824", "ratio ≥ 10", "yes"]
    assert rows[("api", "p99 added by shadow scoring at 500 req/s (ms)")][2:] == ["0.39", "—", "—", "—", "≤ 1 ms", "yes"]
    assert rows[("edge", "int8 model size (bytes)")][5:] == ["3.747", "ratio ≥ 3.5", "yes"]
    assert rows[("edge", "agent peak RSS (MB)")][5:] == ["—", "≤ 150 MB", "yes"]
    headlines = json.loads((tmp_path / "results.json").read_text())["headlines"]
    assert [h["met"] for h in headlines if h["benchmark"] == "ingest"] == [False, False]


def test_a_failed_benchmark_gets_a_line_of_its_own_and_no_figures(tmp_path: Path) -> None:
    outcomes = [Outcome("produce", 4.0, result=RECORDED["produce"]), Outcome("api", 2.5, error="the score server stopped:\nTraceback ...")]
    write_report(outcomes, tmp_path, datetime(2026, 11, 23, tzinfo=UTC), quick=True)

    report = (tmp_path / "report.md").read_text()
    assert "- **api failed:** the score server stopped: Traceback ..." in report
    assert "| api | — | 2.5 | failed |" in report and "| produce | 100,000 events | 4.0 | ok |" in report
    assert [cells[0] for cells in table_rows(report).values()] == ["produce"]
    assert json.loads((tmp_path / "results.json").read_text())["benchmarks"]["api"] == {
        "seconds": 2.5, "result": None, "error": "the score server stopped:\nTraceback ...",
    }
