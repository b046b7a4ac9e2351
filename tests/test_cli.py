"""The ``edgelake`` command as a user runs it: a real process against a real broker."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edgelake.broker import EmbeddedBroker
from edgelake.console import metric_text
from edgelake.contracts import EVENT_TYPES
from support import DATASET_CACHE

GROUPS = ["broker", "produce", "ingest", "lake", "sql", "train", "models", "serve", "edge", "bench"]


def edgelake(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgelake", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def env(kafka: EmbeddedBroker, tmp_path: Path) -> dict[str, str]:
    return {
        "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "EDGELAKE_TOPIC_PREFIX": f"cli{uuid.uuid4().hex[:8]}-",
        "EDGELAKE_DATA_DIR": str(tmp_path),
        "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake"),
        "EDGELAKE_CACHE_DIR": str(DATASET_CACHE),
    }


def test_help_lists_every_command_group() -> None:
    result = edgelake("--help")
    assert result.returncode == 0
    for group in GROUPS:
        assert f" {group} " in result.stdout


def test_config_show_reflects_the_environment(env: dict[str, str]) -> None:
    result = edgelake("config", "show", "--json", env={**env, "EDGELAKE_LAKE_ROOT": "s3://bucket/lake"})
    values = json.loads(result.stdout)
    assert values["lake_root"] == "s3://bucket/lake"
    assert values["kafka_bootstrap_servers"] == env["EDGELAKE_KAFKA_BOOTSTRAP_SERVERS"]


def test_schemas_export(tmp_path: Path) -> None:
    result = edgelake("schemas", "export", str(tmp_path / "schemas"))
    assert result.returncode == 0
    assert len(list((tmp_path / "schemas").glob("*.v1.json"))) == len(EVENT_TYPES)


def test_produce_prints_a_delivery_summary(env: dict[str, str]) -> None:
    result = edgelake("produce", "transactions", "--source", "synthetic", "--count", "1500", env=env)
    assert result.returncode == 0, result.stderr
    assert "delivery summary" in result.stdout
    assert "│ transactions │ synthetic │ 1,500 │ 1,500        │ 0      │" in result.stdout


def test_produce_refuses_a_bad_file_before_sending_anything(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("t,amount\n2024-01-01T00:00:00,5\n2024-01-01T00:00:01,nan\n")
    result = edgelake("produce", "transactions", "-s", "file", "--path", str(path), "--map", "event_time=t,amount=amount", env=env)
    assert result.returncode == 2
    assert "at row 1: field 'amount'" in result.stderr
    assert "delivery summary" not in result.stdout


def test_produce_refuses_an_unknown_source(env: dict[str, str]) -> None:
    result = edgelake("produce", "images", "--source", "ulb", env=env)
    assert result.returncode == 2
    assert "choose one of: fashion-mnist" in result.stderr


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    env = {"EDGELAKE_DATA_DIR": str(tmp_path)}
    unknown = edgelake("keys", "revoke", "key_nope", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == ["error: no API key 'key_nope'; see `edgelake keys list`"]
    (tmp_path / "api" / "control.sqlite").write_bytes(b"not a database " * 512)  # no edgelake writes this: reading it is a bug's path
    corrupt = edgelake("keys", "revoke", "key_nope", env=env)
    assert corrupt.returncode == 1
    assert "Traceback (most recent call last)" in corrupt.stderr and "DatabaseError" in corrupt.stderr, corrupt.stderr
    assert not corrupt.stderr.startswith("error:")


def test_demo_produces_every_feed_reads_it_back_and_lands_it_in_the_lake(env: dict[str, str]) -> None:
    result = edgelake("demo", "--limit", "300", env=env)
    assert result.returncode == 0, result.stderr
    prefix = env["EDGELAKE_TOPIC_PREFIX"]
    for topic, count in [("transactions", 600), ("fraud-labels", 600), ("iot-readings", 300), ("camera-frames", 300)]:
        assert f"│ {prefix}{topic} " in result.stdout
        line = next(line for line in result.stdout.splitlines() if f"│ {prefix}{topic} " in line)
        cells = [cell.strip() for cell in line.split("│") if cell.strip()]
        assert cells[1:4] == [str(count), str(count), "0"], line
    ingest_rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") == 8}
    for topic, count in [("transactions", 600), ("fraud-labels", 600), ("iot-readings", 300), ("camera-frames", 300)]:
        cells = [cell.strip() for cell in ingest_rows[topic].split("│")[1:-1]]
        assert cells[1] == str(count) and cells[5] == str(count), ingest_rows[topic]  # read, bronze rows
        assert int(cells[2]) + int(cells[3]) + int(cells[4]) == count  # silver + quarantined + duplicates
    gold_rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│ gold_")}
    assert "built from silver_transactions" in gold_rows["gold_card_features"] and " 600 " in gold_rows["gold_card_features"]
    assert "built from silver_iot_readings" in gold_rows["gold_device_health"]
    assert "recomputed from silver_transactions" in gold_rows["gold_fraud_rates"]
    answer = result.stdout.split("ask the lake")[1].splitlines()
    assert any(line.startswith("┃ merchant_category ") for line in answer)
    categories = [line.split()[1] for line in answer if line.startswith("│ ")]
    assert "unknown" in categories and "atm_cash" in categories  # ULB's and synthetic ones
    assert "tables read at versions gold_fraud_rates@1" in result.stderr  # 0: created empty with its name and description; 1: Spark's rows


def test_bench_produce_reports_a_ratio_against_raw_sends(env: dict[str, str]) -> None:
    result = edgelake("bench", "produce", "--events", "3000", "--json", env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"events", "seconds", "events_per_s", "baseline_events_per_s", "ratio"}
    assert figures["events"] == 3000 and figures["ratio"] > 0


def test_bench_sql_times_both_engines_on_the_same_answers(env: dict[str, str]) -> None:
    result = edgelake("bench", "sql", "--rows", "5000", "--repeats", "1", "--master", "local[1]", "--json", env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"rows", "queries", "embedded_p50_s", "spark_p50_s", "ratio"}
    assert [q["name"] for q in figures["queries"]] == ["aggregate", "join", "window"]
    assert all(q["result_rows"] > 0 and q["embedded_p50_s"] > 0 and q["spark_p50_s"] > 0 for q in figures["queries"])
    assert figures["rows"] == 5000 and figures["ratio"] == pytest.approx(figures["spark_p50_s"] / figures["embedded_p50_s"], rel=0.01)


def test_bench_train_reports_feature_rows_and_training_samples_per_second(env: dict[str, str]) -> None:
    result = edgelake("bench", "train", "--rows", "2000", "--images", "300", "--device", "cpu", "--runs", "1", "--json", env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {
        "device", "spark_master", "feature_rows", "feature_rows_per_s", "feature_rows_per_s_one_core", "feature_ratio",
        "feature_rows_per_s_standalone", "standalone_cluster", "fraud_samples_per_s", "vision_samples_per_s",
    }
    assert figures["feature_rows"] == 2000 and "CPU" in figures["device"]
    assert all(figures[key] > 0 for key in ("feature_rows_per_s", "feature_rows_per_s_one_core", "fraud_samples_per_s", "vision_samples_per_s"))


def test_model_metrics_print_counts_as_integers_and_scores_to_four_decimals() -> None:
    assert [metric_text(v) for v in (85443.0, 114216.0, 0.915123, 3.7474259, 0.0)] == ["85,443", "114,216", "0.9151", "3.7474", "0"]


def test_model_metrics_print_durations_and_rates_with_their_units() -> None:
    named = [("seconds", 185.234), ("seconds_per_epoch", 18.43), ("fit_seconds", 3.0), ("int8_latency_ms", 0.01432), ("train_samples_per_s", 705.5)]
    assert [metric_text(value, name) for name, value in named] == ["185.2 s", "18.4 s", "3.0 s", "0.014 ms", "706/s"]
