"""A user's own wide file, end to end with no code change: produced to a real broker with ``--map``, ingested, and
learnt by ``edgelake train fraud --source file``, whose inputs come from the file's columns.

The file (``bench.wide_file``) has 80 numeric and 8 text columns with missing cells; its signal is planted in one
numeric column and one text column's value, and its amounts, times and cards carry none, so a model reading the
old fixed inputs (the ULB set's V1–V28, the amount, time and card features) could only guess (ROC-AUC about 0.5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from edgelake.bench.wide_file import WIDE_FILE_MAP, PlantedSignals, silver_tables, write_wide_file
from edgelake.broker import EmbeddedBroker
from edgelake.cli import app
from edgelake.lake.features.input_profile import MAX_VOCABULARY

ROWS, NUMERIC, TEXT = 24_000, 80, 8


@pytest.fixture(scope="module")
def trained(kafka: EmbeddedBroker, spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[PlantedSignals, Path, dict]:
    """The wide file, and the metrics of the fraud version trained on it through the broker and the lake."""
    folder = tmp_path_factory.mktemp("wide")
    path = folder / "transactions.parquet"
    planted = write_wide_file(path, ROWS, NUMERIC, TEXT, seed=11)
    env = {
        **os.environ, "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": f"wide{uuid.uuid4().hex[:8]}-",
        "EDGELAKE_DATA_DIR": str(folder / "data"), "EDGELAKE_LAKE_ROOT": str(folder / "lake"), "COLUMNS": "200",
    }
    for kind in ("transactions", "labels"):
        edgelake(env, "produce", kind, "--source", "file", "--path", str(path), "--map", WIDE_FILE_MAP)
    edgelake(env, "ingest", "run", "--once", "--topics", "transactions", "--topics", "fraud-labels")

    with pytest.MonkeyPatch.context() as patch:  # training in this process, on the session's Spark
        for name in ("EDGELAKE_KAFKA_BOOTSTRAP_SERVERS", "EDGELAKE_DATA_DIR", "EDGELAKE_LAKE_ROOT", "COLUMNS"):
            patch.setenv(name, env[name])
        patch.setattr("edgelake.lake.spark.spark_session", lambda master, app_name, **_: spark)
        cli = CliRunner()
        result = cli.invoke(app, ["train", "fraud", "--source", "file", "--epochs", "8", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "inputs:" in result.stdout and planted.always_empty not in result.stdout, result.stdout
        shown = cli.invoke(app, ["models", "show", "fraud", "--json"])
        assert shown.exit_code == 0, shown.output
    version = json.loads(shown.stdout)
    return planted, path, version["metrics"] | version["extra"]["details"]  # the figures, and the rest (split, inputs)


def edgelake(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "edgelake", *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_model_reads_the_file_s_own_columns_and_says_what_it_set_aside(trained: tuple[PlantedSignals, Path, dict]) -> None:
    planted, _, metrics = trained
    inputs = metrics["inputs"]
    assert metrics["split"]["train"] + metrics["split"]["validation"] + metrics["split"]["test"] == ROWS
    assert planted.planted_numeric in inputs["attributes"] and len(inputs["attributes"]) == NUMERIC - 2  # the empty and constant ones aside
    assert set(inputs["missing_indicators"]) < set(inputs["attributes"]) and inputs["missing_indicators"]
    assert planted.planted_value in inputs["categories"][planted.planted_column]
    assert inputs["set_aside"][planted.always_same] == "constant (1 in every row)"
    assert planted.always_empty not in inputs["attributes"]  # never in any transaction: nothing to read, nothing to report
    assert len(inputs["categories"]["DeviceInfo"]) <= MAX_VOCABULARY  # 2,000 device names: the common ones, then "other"
    assert inputs["set_aside"]["merchant_category"] == "constant ('unknown' in every row)" and "country" in inputs["set_aside"]


def test_both_planted_signals_are_learnt(trained: tuple[PlantedSignals, Path, dict]) -> None:
    """The model ranks the latest transactions better than either planted signal does alone."""
    planted, path, metrics = trained
    columns = ["TransactionID", "TransactionDT", "TransactionAmt", "isFraud", planted.planted_numeric, planted.planted_column]
    frame = pq.read_table(path, columns=columns).to_pandas()
    frame = frame.assign(event_id=frame["TransactionID"].astype(str)).sort_values(["TransactionDT", "event_id"])
    frame["planted"] = (frame[planted.planted_column] == planted.planted_value).astype(float)
    hour = 2 * np.pi * (frame["TransactionDT"] % 86_400) / 86_400
    frame = frame.assign(log_amount=np.log1p(frame["TransactionAmt"]), hour_sin=np.sin(hour), hour_cos=np.cos(hour))
    train, test = frame.iloc[: -metrics["split"]["test"]], frame.iloc[-metrics["split"]["test"] :]

    def fitted_auc(names: list[str]) -> float:
        """ROC-AUC on the test part of a logistic regression on these columns of the earlier part."""
        regression = LogisticRegression().fit(train[names], train["isFraud"])
        return float(roc_auc_score(test["isFraud"], regression.decision_function(test[names])))

    alone = {"numeric": fitted_auc([planted.planted_numeric]), "text": fitted_auc(["planted"])}
    assert min(alone.values()) > 0.65, alone  # each is a real signal
    assert fitted_auc(["log_amount", "hour_sin", "hour_cos"]) < 0.6  # where the old fixed inputs had something to read
    assert metrics["roc_auc"] > max(alone.values()) + 0.03, (metrics["roc_auc"], alone)
    assert metrics["roc_auc"] > fitted_auc([planted.planted_numeric, "planted"]) - 0.06  # near what the two planted signals allow
    assert metrics["auprc"] > 3 * test["isFraud"].mean()


def test_the_benchmark_s_column_wise_silver_rows_are_ingest_s(tmp_path: Path) -> None:
    """``bench.wide_file.silver_tables`` (how ``edgelake bench wide-train`` lands 600,000 wide rows fast) gives the rows
    the file source and ingest's classification give."""
    from edgelake.bench.silver import silver_rows
    from edgelake.contracts import FraudLabel, Transaction
    from edgelake.ingest.sources.tabular_file import events, parse_mapping

    path = tmp_path / "small.parquet"
    write_wide_file(path, 400, 40, 8, seed=3)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    mapping = parse_mapping([WIDE_FILE_MAP])
    (fast_transactions, fast_labels), = silver_tables(path, start)
    for fast, event_type in ((fast_transactions, Transaction), (fast_labels, FraudLabel)):
        slow = silver_rows(list(events(path, event_type, mapping, start)))
        assert fast.schema == slow.schema
        compared = [name for name in slow.column_names if name != "_ingest_time"]
        assert as_rows(fast.select(compared)) == as_rows(slow.sort_by("_offset").select(compared))


def as_rows(table: pa.Table) -> list[dict[str, object]]:
    """Rows with maps as dicts: a map's entries have no order (ingest's fast lane lists them in its block's key order)."""
    maps = [field.name for field in table.schema if pa.types.is_map(field.type)]
    return [{name: dict(value) if name in maps and value is not None else value for name, value in row.items()} for row in table.to_pylist()]
