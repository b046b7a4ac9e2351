"""``edgelake train fraud|vision`` publish signed versions whose manifests carry the metrics the API and devices read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgelake.cli import app
from edgelake.ingest.sources import synthetic
from support import append_silver

FRAUD_METRICS = {"auprc", "roc_auc", "recall_at_1pct_fpr", "precision_at_threshold", "recall_at_threshold"}
VISION_METRICS = {"accuracy", "int8_accuracy", "size_ratio", "int8_agreement"}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spark) -> CliRunner:
    """The CLI with a data dir of its own (for the signing key) and the session's Spark."""
    monkeypatch.setenv("EDGELAKE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr("edgelake.lake.spark.spark_session", lambda master, app_name, **_: spark)
    return CliRunner()


def run(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_train_fraud_publishes_a_signed_version_and_retrains_it_into_shadow_on_new_data(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgelake.settings import Settings
    from edgelake.training import registry

    lake = str(tmp_path / "lake")
    config = synthetic.SyntheticConfig(seed=3, cards=80, merchants=60, fraud_rate=0.06)
    transactions, labels = list(synthetic.transactions(config, 3500)), list(synthetic.labels(config, 3500))
    append_silver(lake, transactions[:3000])
    append_silver(lake, labels[:3000])
    monkeypatch.setenv("EDGELAKE_LAKE_ROOT", lake)

    out = run(cli, "train", "fraud", "--source", "synthetic", "--epochs", "2", "--device", "cpu", "--promote-to", "production")
    assert "fraud v1 published as production" in out

    first = json.loads(run(cli, "models", "show", "fraud", "--json"))
    assert first["stage"] == "production" and first["version"] == 1
    assert FRAUD_METRICS <= set(first["metrics"]) and 0 <= first["metrics"]["auprc"] <= 1
    assert {"fraud.keras", "fraud.tflite", "metrics.json", "pr_curve.png", "roc_curve.png", "score_histogram.png"} <= set(first["files"])
    assert set(first["lineage"]) == {"silver_transactions", "silver_fraud_labels", "gold_card_features"}
    assert first["feature_version"] and first["extra"]["details"]["source"] == "synthetic"
    assert "fraud v1: verified" in run(cli, "models", "verify", "fraud")

    # Retraining v1 needs something new to learn from; the new version enters shadow under the fraud rules.
    unchanged = cli.invoke(app, ["train", "fraud", "--since-version", "1", "--epochs", "1", "--device", "cpu"])
    assert unchanged.exit_code != 0 and "nothing new since fraud v1" in " ".join(unchanged.output.split()), unchanged.output
    append_silver(lake, transactions[3000:], first_offset=3000)
    append_silver(lake, labels[3000:], first_offset=3000)
    out = run(cli, "train", "fraud", "--since-version", "1", "--epochs", "1", "--device", "cpu")
    assert "fraud v2 published as canary" in out, out
    retrained = json.loads(run(cli, "models", "show", "fraud", "--version", "2", "--json"))
    assert retrained["extra"]["retrained_from"] == 1 and retrained["extra"]["details"]["source"] == "synthetic"
    assert retrained["lineage"]["silver_transactions"] > first["lineage"]["silver_transactions"]
    policy = registry.rollout_policy(registry.Registry.from_settings(Settings()), "fraud")  # the environment's, as the CLI's
    assert (policy.canary_version, policy.canary_percent, policy.max_accuracy_drop) == (2, 100, 0.0)
    waiting = run(cli, "models", "evaluate", "fraud")
    assert "0 transactions scored beside production" in waiting and "verdict: wait" in waiting, waiting


def test_train_vision_publishes_the_int8_model_with_its_smoke_test(cli: CliRunner, frames_lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(frames_lake.root, lake)  # the session's frames, with a registry of this test's own
    monkeypatch.setenv("EDGELAKE_LAKE_ROOT", str(lake))

    out = run(cli, "train", "vision", "--limit", "500", "--epochs", "1", "--device", "cpu")
    assert "vision v1 published as candidate" in out

    shown = json.loads(run(cli, "models", "show", "vision", "--json"))
    assert VISION_METRICS <= set(shown["metrics"]) and shown["metrics"]["size_ratio"] >= 3.5
    assert {"vision.keras", "vision_int8.tflite", "vision_float.tflite", "samples.npz", "confusion_matrix.png"} <= set(shown["files"])
    assert shown["extra"]["samples"]["file"] == "samples.npz" and len(shown["extra"]["samples"]["expected"]) == 16
    assert shown["lineage"] == {"silver_camera_frames": 3}

    artifact = lake / "models" / "vision" / "1" / "vision_int8.tflite"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    tampered = cli.invoke(app, ["models", "verify", "vision"])
    assert tampered.exit_code == 1 and "vision v1: FAILED" in tampered.stdout and "vision_int8.tflite" in tampered.stdout
