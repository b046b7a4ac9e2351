"""The fraud rollout loop on matured labels: a canary scores in shadow through a real server, its scores and production's
land in the lake through the real ingester, and the gate (the CLI's ``models evaluate --settle`` and the API's own
background check) rejects a model trained on shuffled labels and promotes the real one over it, judging only the
transactions whose labels matured."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx2
import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from edgelake.api.app import create_app
from edgelake.contracts import FraudLabel, FraudScore, Transaction
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources import synthetic
from edgelake.kafka import ensure_topics
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import SILVER
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.fraud import FraudConfig, FraudResult, train_fraud
from edgelake.control_db import ControlDb
from edgelake.training.matured_labels import matured_evidence, put_in_shadow
from support import append_silver, command_env, copy_world

SCORED = 1_500  # about 90 frauds at the synthetic fraud rate of 6%
MATURITY = timedelta(days=7)


@pytest.fixture(scope="module")
def shuffled_run(spark, fraud_lake: Settings, tmp_path_factory: pytest.TempPathFactory) -> FraudResult:
    """A fraud model trained like production's, on the same transactions with their labels shuffled."""
    root = tmp_path_factory.mktemp("shuffled") / "lake"
    shutil.copytree(fraud_lake.lake_root, root)
    lake = Lake(str(root))
    labels = lake.open(SILVER[FraudLabel.topic].name)
    table = labels.to_pyarrow_table()
    shuffled = np.random.default_rng(0).permutation(table["is_fraud"].to_numpy(zero_copy_only=False))
    table = table.set_column(table.schema.get_field_index("is_fraud"), "is_fraud", pa.array(shuffled))
    write_deltalake(labels, table, mode="overwrite")  # the card features (gold) depend on the transactions alone: they stand
    return train_fraud(spark, lake, tmp_path_factory.mktemp("shuffled-run"), FraudConfig(source="synthetic", epochs=2, device="cpu"))


def publish(settings: Settings, run: FraudResult, stage: str | None = None) -> int:
    return registry.publish_run(
        Lake.from_settings(settings), ControlDb.from_settings(settings), settings.data_dir / registry.KEYS_DIR, "fraud", run.files,
        metrics={"auprc": run.metrics["auprc"]},
        lineage=run.lineage, feature_version=run.feature_version, promote_to=stage,  # type: ignore[arg-type]
    ).version


def score_in_shadow(serve, settings: Settings, token: str, seed: int, labelled: int) -> tuple[list[Transaction], list[FraudLabel]]:
    """Score SCORED fresh transactions through a real server, land them with the first ``labelled`` labels (the rest have not
    come yet) and the score events (through the ingester) in the lake; the transactions and the labels landed."""
    config = synthetic.SyntheticConfig(seed=seed, cards=60, merchants=40, fraud_rate=0.06)
    transactions = list(synthetic.transactions(config, SCORED))
    with serve(create_app(settings, rate_per_s=10_000, burst=10_000)) as url, httpx2.Client(base_url=url, timeout=60) as http:
        for start in range(0, SCORED, 500):
            batch = [json.loads(t.to_bytes()) for t in transactions[start : start + 500]]
            answer = http.post("/v1/score:batch", json=batch, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
    labels = list(synthetic.labels(config, SCORED))[:labelled]
    append_silver(settings.lake_root, transactions, partition=seed)
    append_silver(settings.lake_root, labels, partition=seed)
    ingest(settings, IngestOptions(topics=(FraudScore.topic,)), once=True)
    return transactions, labels


def stage_history(settings: Settings) -> list[registry.Transition]:
    return registry.read_book(registry.Registry.from_settings(settings), "fraud").history


def test_the_gate_rejects_a_shuffled_label_model_and_promotes_the_real_one_on_matured_labels(
    fraud_lake: Settings, shuffled_run: FraudResult, serve, tmp_path: Path
) -> None:

    from edgelake.api.keys import KeyStore

    settings = copy_world(
        fraud_lake, tmp_path / "gate", topic_prefix=f"gate{uuid.uuid4().hex[:8]}-", score_model_check_s=0.0, fraud_gate_check_s=3600.0
    )
    ensure_topics(settings, settings.kafka_bootstrap_servers)
    token = KeyStore(ControlDb.from_settings(settings)).create("gate producer", "producer")[1]
    models = registry.Registry.from_settings(settings)
    real = registry.current(models, "fraud")
    assert real is not None

    # 1. The shuffled-label model in shadow beside the real one; labels have come for the first two thirds only.
    shuffled = publish(settings, shuffled_run)
    policy = put_in_shadow(models, shuffled, MATURITY)
    transactions, labels = score_in_shadow(serve, settings, token, seed=21, labelled=2 * SCORED // 3)
    evidence = matured_evidence(Lake.from_settings(settings), policy, MATURITY)
    assert len(evidence.pairs.matured) == SCORED
    clock = max(event.event_time for event in [*transactions, *labels])  # the lake's latest event time
    matured = sum(t.event_time <= clock - MATURITY for t in transactions)
    assert evidence.matured == matured and 0 < matured < SCORED, (evidence.matured, matured)

    env = command_env(settings, EDGELAKE_FRAUD_LABEL_MATURITY_DAYS="7", COLUMNS="200")
    shown = subprocess.run([sys.executable, "-m", "edgelake", "models", "evaluate", "fraud", "--settle"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"{matured:,} with matured labels" in shown.stdout and "verdict: reject" in shown.stdout, shown.stdout
    assert registry.versions(models, "fraud")[shuffled] == "rolled_back" and registry.current(models, "fraud") == real
    rejected = stage_history(settings)[-1]
    assert rejected.version == shuffled and f"canary v{shuffled} AUPRC" in (rejected.reason or "") and "not above 0" in (rejected.reason or "")

    # 2. The shuffled model in production, the real one in shadow: the API's own gate promotes the real one.
    worse = publish(settings, shuffled_run, "production")
    better = publish(settings, FraudResult(*_files_of(models, real), feature_version=shuffled_run.feature_version))
    put_in_shadow(models, better, MATURITY)
    score_in_shadow(serve, settings.model_copy(update={"fraud_gate_check_s": 3600.0}), token, seed=22, labelled=SCORED)
    with serve(create_app(settings.model_copy(update={"fraud_gate_check_s": 0.2}))):
        deadline = time.monotonic() + 60
        while registry.current(models, "fraud") != better and time.monotonic() < deadline:
            time.sleep(0.2)
    assert registry.current(models, "fraud") == better and registry.versions(models, "fraud")[worse] == "archived"
    promoted = stage_history(settings)[-1]
    assert (promoted.version, promoted.to, promoted.actor) == (better, "production", "shadow-gate"), promoted
    assert "above 0" in (promoted.reason or "") and "not above" not in (promoted.reason or ""), promoted.reason


def _files_of(models: registry.Registry, version: int) -> tuple[dict[str, Path], dict[str, float], dict[str, int]]:
    """A published version's files, metrics and lineage, to publish the same model again as a new version."""
    published = registry.get(models, "fraud", version)
    return {name: published.path / name for name in published.manifest.files}, dict(published.manifest.metrics), dict(published.manifest.lineage)
