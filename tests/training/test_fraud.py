"""The fraud model trained for real (Spark local, Keras on CPU) on a small lake: what it writes, how it splits
and labels its examples, and that it learns.

The lake holds a ULB sample (every fraud of the data set and every 100th legitimate
transaction, about 3,300, so the test part has enough frauds to measure), synthetic
transactions, and hand-made transactions whose labels arrive around a cut-off. A run on
the sample takes a few seconds of training; the full data set is measured separately.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgelake.signing import MANIFEST
from edgelake.contracts import FraudLabel, Transaction
from edgelake.control_db import ControlDb
from edgelake.ingest.sources import synthetic, ulb
from edgelake.errors import UserError
from edgelake.lake.catalog import Lake
from edgelake.lake.features.definitions import CARD_FEATURES
from edgelake.lake.features.model_inputs import INPUTS_FILE, INPUTS_VERSION, InputSpec
from edgelake.lake.gold import build_card_features
from support import append_silver
from edgelake.training import registry
from edgelake.training.drift import DISTRIBUTIONS_FILE, Bins, Categories, TrainingDistributions
from edgelake.training.evaluation import best_f1_threshold, binary_metrics
from edgelake.training.fraud import (
    Examples, FraudConfig, FraudResult, LabelledTransactions, build_model, calibrated, labelled_transactions, mean_logit, split_by_time,
    train_fraud, with_quadratic_logit,
)

ULB_START = datetime(2013, 9, 1, tzinfo=UTC)
LEGIT_EVERY = 100
SYNTHETIC = synthetic.SyntheticConfig(seed=3, cards=40, merchants=60, fraud_rate=0.05)
SYNTHETIC_COUNT = 400
CUTOFF = datetime(2025, 3, 1, tzinfo=UTC)
TIMINGS = ("seconds", "examples_seconds", "fit_seconds", "train_samples_per_s", "peak_rss_mb")


class FraudLake(NamedTuple):
    root: str
    ulb_transactions: int
    ulb_frauds: int


def ulb_sample(ulb_csv: Path, target: Path) -> tuple[int, int]:
    """Every fraud and every ``LEGIT_EVERY``-th legitimate row of the ULB CSV, in time order, written to ``target``;
    the rows and frauds written."""
    with ulb_csv.open(newline="") as source, target.open("w", newline="") as sample:
        reader = csv.reader(source)
        writer = csv.writer(sample)
        header = next(reader)
        writer.writerow(header)
        kept = [row for i, row in enumerate(reader) if row[-1] == "1" or i % LEGIT_EVERY == 0]
        writer.writerows(kept)
    return len(kept), sum(row[-1] == "1" for row in kept)


def point_in_time_cases() -> tuple[list[Transaction], list[FraudLabel]]:
    """``pit-late``: its only label arrives after ``CUTOFF``; ``pit-flip``: legitimate before it, fraud after."""
    when = CUTOFF - timedelta(days=20)
    transactions = [
        Transaction(
            event_id=f"pit-{name}", event_time=when, card_id=f"pit-card-{name}", merchant_id="m1",
            merchant_category="grocery", amount=25.0, currency="EUR",
        )
        for name in ("late", "flip")
    ]
    labels = [
        FraudLabel(event_id="pit-late-label", event_time=CUTOFF + timedelta(hours=1), transaction_id="pit-late", card_id="pit-card-late", is_fraud=True),
        FraudLabel(
            event_id="pit-flip-legit", event_time=CUTOFF - timedelta(days=1), transaction_id="pit-flip", card_id="pit-card-flip", is_fraud=False,
            source="analyst",
        ),
        FraudLabel(event_id="pit-flip-fraud", event_time=CUTOFF + timedelta(days=1), transaction_id="pit-flip", card_id="pit-card-flip", is_fraud=True),
    ]
    return transactions, labels


@pytest.fixture(scope="module")
def fraud_lake(spark, ulb_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> FraudLake:
    root = tmp_path_factory.mktemp("fraud")
    sample = root / "ulb-sample.csv"
    rows, frauds = ulb_sample(ulb_csv, sample)
    lake = str(root / "lake")
    pit_transactions, pit_labels = point_in_time_cases()
    append_silver(lake, list(ulb.transactions(sample, ULB_START)))
    append_silver(lake, [*synthetic.transactions(SYNTHETIC, SYNTHETIC_COUNT), *pit_transactions], partition=1)
    append_silver(lake, list(ulb.labels(sample, ULB_START)))
    append_silver(lake, [*synthetic.labels(SYNTHETIC, SYNTHETIC_COUNT), *pit_labels], partition=1)
    assert build_card_features(spark, Lake(lake)).changed  # the lake's gold build, which training reads
    return FraudLake(lake, rows, frauds)


def small(**changes: object) -> FraudConfig:
    """The configuration of the runs here: few epochs, small batches, on CPU."""
    return replace(FraudConfig(epochs=8, batch_size=128, seed=3, device="cpu"), **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ulb_run(spark, fraud_lake: FraudLake, tmp_path_factory: pytest.TempPathFactory) -> FraudResult:
    return train_fraud(spark, Lake(fraud_lake.root), tmp_path_factory.mktemp("fraud-out"), small())


@pytest.fixture(scope="module")
def ulb_examples(spark, fraud_lake: FraudLake) -> Iterator[LabelledTransactions]:
    """The labelled ULB transactions the runs here learn from."""
    with labelled_transactions(spark, Lake(fraud_lake.root), small()) as (examples, _):
        yield examples


def labelled(spark, lake: str | Lake, config: FraudConfig) -> pd.DataFrame:
    """The ids, times and labels of the transactions ``config`` learns from in ``lake``, oldest first."""
    with labelled_transactions(spark, lake if isinstance(lake, Lake) else Lake(lake), config) as (examples, _):
        return pa.Table.from_batches(list(examples.batches(["event_id", "event_time", "is_fraud"]))).to_pandas()


def test_a_run_writes_the_model_its_tflite_twin_metrics_and_plots(ulb_run: FraudResult) -> None:
    expected = {"fraud.keras", "fraud.tflite", "metrics.json", "pr_curve.png", "roc_curve.png", "score_histogram.png", DISTRIBUTIONS_FILE, INPUTS_FILE}
    assert set(ulb_run.files) == expected
    assert all(path.is_file() and path.stat().st_size > 0 for path in ulb_run.files.values())
    assert all(ulb_run.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in expected if name.endswith(".png"))
    metrics = json.loads(ulb_run.files["metrics.json"].read_text())
    assert metrics == json.loads(json.dumps(ulb_run.metrics))
    for key in ("auprc", "roc_auc", "recall_at_1pct_fpr", "threshold", "precision_at_threshold", "recall_at_threshold"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["threshold"] <= metrics["decline_threshold"] <= 1.0  # the scorer's review and decline thresholds
    assert metrics["source"] == "ulb" and "anchors" in metrics and metrics["peak_rss_mb"] > 100
    assert metrics["inputs"] == InputSpec.read(ulb_run.files[INPUTS_FILE]).report()
    assert metrics["inputs"]["attributes"] == [f"V{i}" for i in range(1, 29)] and metrics["inputs"]["categories"] == {}
    assert metrics["inputs"]["set_aside"] == {"merchant_category": "constant ('unknown' in every row)", "country": "never present"}
    assert ulb_run.feature_version == INPUTS_VERSION
    assert set(ulb_run.lineage) == {"silver_transactions", "silver_fraud_labels", "gold_card_features"}


def test_a_run_records_the_distributions_of_its_test_part(ulb_run: FraudResult, ulb_examples: LabelledTransactions) -> None:
    spec, _, _, test = split_by_time(ulb_examples, small())
    distributions = TrainingDistributions.read(ulb_run.files[DISTRIBUTIONS_FILE], spec.names)
    for i, name in enumerate(spec.names):
        assert distributions.inputs[name] == Bins.of(test.inputs[:, i]), name
    amounts = distributions.inputs["log_amount"]
    assert len(amounts.shares) >= 10 and amounts.edges[1] == pytest.approx(np.log1p(ulb_examples.column("amount")[-len(test.labels) :].min()))
    assert distributions.inputs["is_first_transaction"].shares == (0.0, 1.0, 0.0)  # one transaction per ULB card: a constant 1
    assert len(distributions.score.shares) >= 10 and sum(distributions.score.shares) == pytest.approx(1.0)
    assert distributions.score.edges[-1] <= 1.0 and distributions.score.shares[-1] == 0.0
    assert distributions.fields["merchant_category"] == Categories(values=("unknown",), shares=(1.0, 0.0))
    assert distributions.fields["country"] == Categories(values=(None,), shares=(1.0, 0.0))  # ULB has no countries


def test_the_model_learns_the_ulb_sample(ulb_run: FraudResult) -> None:
    metrics = ulb_run.metrics
    assert metrics["examples"] == metrics["split"]["test"] and metrics["positives"] > 20
    fraud_share = metrics["positives"] / metrics["examples"]
    assert metrics["roc_auc"] > 0.95  # a constant scorer has 0.5
    assert metrics["auprc"] > max(0.7, 3 * fraud_share)  # a constant scorer has the fraud share
    assert metrics["recall_at_threshold"] > 0.5 and metrics["precision_at_threshold"] > 0.5


def test_the_test_metrics_come_with_their_bootstrap_intervals(ulb_run: FraudResult) -> None:
    metrics = ulb_run.metrics
    for name in ("auprc", "roc_auc", "recall_at_1pct_fpr"):
        low, high = metrics[f"{name}_low"], metrics[f"{name}_high"]
        assert 0.0 <= low < high <= 1.0 and low <= metrics[name] <= high, name
    assert metrics["roc_auc_high"] - metrics["roc_auc_low"] < 0.1  # the sample's test part holds enough frauds to pin it down


def test_tflite_gives_the_keras_probabilities(ulb_run: FraudResult, ulb_examples: LabelledTransactions) -> None:
    import keras

    from edgelake.interpreters import load_interpreter, predict

    test = split_by_time(ulb_examples, small())[3]
    model = keras.models.load_model(ulb_run.files["fraud.keras"])
    keras_scores = model.predict(test.inputs, verbose=0).ravel()
    tflite_scores = predict(load_interpreter(ulb_run.files["fraud.tflite"]), test.inputs).ravel()
    assert ((keras_scores >= 0) & (keras_scores <= 1)).all() and keras_scores.std() > 0
    np.testing.assert_allclose(tflite_scores, keras_scores, atol=1e-5)
    assert ulb_run.metrics["tflite_max_abs_diff"] < 1e-5


def test_the_split_is_by_time(ulb_run: FraudResult, ulb_examples: LabelledTransactions) -> None:
    _, train, validation, test = split_by_time(ulb_examples, small())
    assert train.event_time.max() <= validation.event_time.min() <= validation.event_time.max() <= test.event_time.min()
    assert (len(train.labels), len(validation.labels), len(test.labels)) == tuple(
        ulb_run.metrics["split"][part] for part in ("train", "validation", "test")
    )
    assert len(test.labels) == pytest.approx(0.3 * ulb_examples.rows, abs=1)
    assert len(validation.labels) == pytest.approx(0.15 * (len(train.labels) + len(validation.labels)), abs=1)


def test_sources_select_their_transactions(spark, fraud_lake: FraudLake) -> None:
    frames = {source: labelled(spark, fraud_lake.root, small(source=source)) for source in ("ulb", "synthetic", "file", "all")}
    assert frames["ulb"]["event_id"].str.startswith("ulb-tx-").all()
    assert (len(frames["ulb"]), int(frames["ulb"]["is_fraud"].sum())) == (fraud_lake.ulb_transactions, fraud_lake.ulb_frauds)
    assert frames["synthetic"]["event_id"].str.startswith("syn-").all() and len(frames["synthetic"]) == SYNTHETIC_COUNT
    assert sorted(frames["file"]["event_id"]) == ["pit-flip", "pit-late"]  # neither the ULB set's nor the generator's
    assert len(frames["all"]) == fraud_lake.ulb_transactions + SYNTHETIC_COUNT + 2  # and the point-in-time cases
    assert frames["all"]["event_time"].is_monotonic_increasing
    with pytest.raises(ValueError, match="unknown source 'shuttle'"):
        labelled(spark, fraud_lake.root, small(source="shuttle"))


def test_labels_are_taken_as_known_at_the_cutoff(spark, fraud_lake: FraudLake) -> None:
    def verdicts(cutoff: datetime | None) -> dict[str, bool]:
        frame = labelled(spark, fraud_lake.root, small(source="all", cutoff=cutoff))
        return {event_id: bool(fraud) for event_id, fraud in zip(frame["event_id"], frame["is_fraud"], strict=True)}

    at_cutoff, now = verdicts(CUTOFF), verdicts(None)
    assert "pit-late" not in at_cutoff and at_cutoff["pit-flip"] is False  # later labels do not exist yet
    assert now["pit-late"] is True and now["pit-flip"] is True  # by now they do: the latest one counts
    assert {k: v for k, v in at_cutoff.items() if not k.startswith("pit-")} == {k: v for k, v in now.items() if not k.startswith("pit-")}
    ulb_only = labelled(spark, fraud_lake.root, small(cutoff=ULB_START + timedelta(days=3)))
    assert 0 < len(ulb_only) < fraud_lake.ulb_transactions  # legitimate ULB rows are confirmed after 7 days


def test_the_same_seed_gives_the_same_metrics(spark, fraud_lake: FraudLake, ulb_run: FraudResult, tmp_path: Path) -> None:
    again = train_fraud(spark, Lake(fraud_lake.root), tmp_path, small())
    assert {k: v for k, v in again.metrics.items() if k not in TIMINGS} == {k: v for k, v in ulb_run.metrics.items() if k not in TIMINGS}
    assert again.lineage == ulb_run.lineage


def test_a_lake_on_object_storage_trains_the_same_model_and_publishes_to_its_registry_there(
    spark, fraud_lake: FraudLake, ulb_run: FraudResult, object_store, tmp_path: Path
) -> None:
    lake = object_store.copy_lake(fraud_lake.root, layers=("silver",))  # gold is built there, on object storage
    assert build_card_features(spark, Lake(lake)).changed
    again = train_fraud(spark, Lake(lake), tmp_path / "run", small())
    assert {k: v for k, v in again.metrics.items() if k not in TIMINGS} == {k: v for k, v in ulb_run.metrics.items() if k not in TIMINGS}
    assert again.lineage == ulb_run.lineage
    assert Lake(lake).open("gold_card_features").count() == Lake(fraud_lake.root).open("gold_card_features").count()

    control = ControlDb(f"sqlite:///{tmp_path / 'control.sqlite'}")
    on_s3 = Lake(lake, registry_mirror=tmp_path / "mirror")  # the registry on object storage too, read through a local mirror
    published = registry.publish_run(on_s3, control, tmp_path / "keys", "fraud", again.files, metrics=again.metrics, lineage=again.lineage)
    assert published.path == tmp_path / "mirror" / "fraud" / "1"
    models = registry.Registry.of(on_s3, control)
    assert models.store is not None and f"fraud/1/{MANIFEST}" in models.store.keys("fraud/1")
    assert registry.verify(models, "fraud", 1) == []


def test_nothing_to_learn_is_a_clear_error(spark, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to learn: table 'silver_transactions' has no data yet"):
        train_fraud(spark, Lake(str(tmp_path / "empty")), tmp_path / "out", small())
    lake = str(tmp_path / "legit")
    legit = synthetic.SyntheticConfig(seed=4, cards=5, merchants=10, fraud_rate=0.0)
    append_silver(lake, list(synthetic.transactions(legit, 50)))
    append_silver(lake, list(synthetic.labels(legit, 50)))
    build_card_features(spark, Lake(lake))
    with pytest.raises(ValueError, match="'synthetic' has 50 labelled transactions, not both classes: nothing to learn"):
        train_fraud(spark, Lake(lake), tmp_path / "out", small(source="synthetic"))
    with pytest.raises(ValueError, match="'ulb' has 0 labelled transactions"):
        train_fraud(spark, Lake(lake), tmp_path / "out", small(source="ulb"))
    assert not (tmp_path / "out").exists()


def test_training_reads_the_gold_build_s_card_features_and_builds_none(spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgelake.lake import gold

    lake = Lake(str(tmp_path / "lake"))
    config = synthetic.SyntheticConfig(seed=4, cards=5, merchants=10, fraud_rate=0.2)
    append_silver(lake.root, list(synthetic.transactions(config, 50)))
    append_silver(lake.root, list(synthetic.labels(config, 50)))
    with pytest.raises(UserError, match="no card features to train on: table 'gold_card_features' has no data yet.*edgelake lake build-gold"):
        labelled(spark, lake, small(source="synthetic"))
    assert not lake.exists("gold_card_features")  # training built none

    monkeypatch.setattr(gold, "_CARD_FEATURES", replace(gold._CARD_FEATURES, feature_version=gold.FEATURE_VERSION + 1))
    build_card_features(spark, lake)
    monkeypatch.undo()
    with pytest.raises(UserError, match=f"gold_card_features was not built with this code's feature version {gold.FEATURE_VERSION}"):
        labelled(spark, lake, small(source="synthetic"))

    build_card_features(spark, lake)
    with labelled_transactions(spark, lake, small(source="synthetic")) as (examples, lineage):
        assert examples.rows == 50 and lineage["gold_card_features"] == lake.open("gold_card_features").version()


def examples_file(frauds: list[bool], folder: Path) -> LabelledTransactions:
    """Transactions one minute apart, oldest first, with these labels and otherwise neutral inputs, in one Parquet file."""
    n = len(frauds)
    columns = {
        "event_id": [f"tx-{i}" for i in range(n)], "event_time": pd.date_range("2025-01-01", periods=n, freq="min").to_numpy(),
        "amount": [1.0] * n, "channel": ["pos"] * n, "merchant_category": ["m"] * n, "country": pa.nulls(n, pa.string()),
        "attributes": pa.array([[("V1", 1.0)]] * n, pa.map_(pa.string(), pa.float64())),
        "categories": pa.array([[]] * n, pa.map_(pa.string(), pa.string())),
        **{f.name: [1.0] * n for f in CARD_FEATURES}, "is_fraud": frauds,
    }
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part-00000.parquet")
    return LabelledTransactions((folder / "part-00000.parquet",))


def test_a_split_part_without_both_classes_is_a_clear_error(tmp_path: Path) -> None:
    _, train, validation, test = split_by_time(examples_file([False, True] * 10, tmp_path / "a"), small())
    assert (len(train.labels), len(validation.labels), len(test.labels)) == (11, 3, 6)
    with pytest.raises(ValueError, match="the test part of the time split has 6 transactions, no fraud one"):
        split_by_time(examples_file([False, True] * 7 + [False] * 6, tmp_path / "b"), small())
    with pytest.raises(ValueError, match="the validation part of the time split has 3 transactions, no legitimate one"):
        split_by_time(examples_file([False, True] * 5 + [False] + [True] * 3 + [False, True] * 3, tmp_path / "c"), small())


def test_binary_metrics_on_known_scores() -> None:
    # 100 legitimate transactions scored 0.00 to 0.99; 5 frauds above them all, 5 at 0.5
    labels = np.array([0] * 100 + [1] * 10)
    scores = np.array([i / 100 for i in range(100)] + [0.995] * 5 + [0.5] * 5)
    metrics = binary_metrics(labels, scores, threshold=0.5)
    assert metrics["recall_at_1pct_fpr"] == 0.5  # at 1% FPR only the 0.99 legitimate one is above the threshold
    assert (metrics["precision_at_threshold"], metrics["recall_at_threshold"]) == (10 / 60, 1.0)  # the 50 scored 0.50 to 0.99 and the frauds
    assert metrics["roc_auc"] == pytest.approx((5 * 100 + 5 * 50.5) / 1000)
    assert (metrics["positives"], metrics["examples"]) == (10, 110)
    assert best_f1_threshold(labels, scores) == 0.995


def test_an_input_constant_in_training_is_only_centred() -> None:
    inputs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    inputs[:, 1] = 2.0  # as every card feature of ULB, one transaction per card
    model = build_model(Examples(inputs, np.zeros(50, np.float32), np.zeros(50)))
    normalized = np.asarray(model.get_layer("normalization")(np.array([[0.0, 3.0, 0.0]], np.float32)))
    assert normalized[0, 1] == pytest.approx(1.0)  # not (3 - 2) / 1e-7


def test_the_towers_logits_are_averaged_in_the_model() -> None:
    inputs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    towers = build_model(Examples(inputs, np.zeros(50, np.float32), np.zeros(50)), towers=3)
    logits = towers.predict(inputs, verbose=0)
    assert logits.shape == (50, 3) and np.ptp(logits, axis=1).min() > 0  # initial weights differ between towers
    np.testing.assert_allclose(mean_logit(towers).predict(inputs, verbose=0).ravel(), logits.mean(axis=1), rtol=1e-5, atol=1e-6)
    one = build_model(Examples(inputs, np.zeros(50, np.float32), np.zeros(50)), towers=1)
    assert mean_logit(one) is one


def test_the_quadratic_regression_finds_frauds_far_from_the_usual_transactions_and_the_calibration_weighs_both_logits() -> None:
    from sklearn.metrics import roc_auc_score

    inputs = np.random.default_rng(0).normal(size=(4000, 3)).astype(np.float32)
    labels = (np.linalg.norm(inputs, axis=1) > 2.5).astype(np.float32)  # on every side of the usual ones: no linear boundary
    examples = Examples(inputs, labels, np.zeros(len(labels)))
    mlp = mean_logit(build_model(examples))
    logits = with_quadratic_logit(mlp, examples, c=1.0)
    both = logits.predict(inputs, verbose=0)
    assert both.shape == (len(labels), 2)
    np.testing.assert_allclose(both[:, 0], mlp.predict(inputs, verbose=0).ravel(), rtol=1e-5, atol=1e-6)  # the MLPs' logit first, as it was
    assert roc_auc_score(labels, both[:, 1]) > 0.99
    model = calibrated(logits, examples)
    weights = model.get_layer("calibrated").get_weights()[0].ravel()
    assert weights.shape == (2,) and weights[1] > abs(weights[0])  # the untrained MLPs' logit counts for little
    assert roc_auc_score(labels, model.predict(inputs, verbose=0).ravel()) > 0.99
