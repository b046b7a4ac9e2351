"""The transaction-fraud model: Spark assembles labelled examples from the lake, Keras learns them.

Examples are silver transactions joined with their card features (``gold_card_features``
as the lake's gold build left it: training builds no gold table) and with the latest label
known by the cut-off: a label that arrived later than the cut-off does not exist for this
training (point in time). They are split by time — the model is tested on the latest part,
as it would be used — and the scores are calibrated (Platt scaling on the validation slice)
inside the exported model, so the Keras file and the TFLite file give the same probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgelake.errors import UserError
from edgelake.lake.catalog import Lake, UnknownTable
from edgelake.lake.features.definitions import FEATURE_VERSION
from edgelake.lake.features.input_profile import InputProfile
from edgelake.lake.features.model_inputs import INPUTS_FILE, INPUTS_VERSION, WATCHED_FIELDS, InputSpec, arrow_columns, batch_input_columns
from edgelake.lake.gold import has_card_features
from edgelake.lake.tables import GOLD_CARD_FEATURES
from edgelake.training.devices import Device, set_seeds, training_strategy
from edgelake.training.evaluation import best_f1_threshold, binary_metrics, bootstrap_intervals, decline_threshold, write_plots

if TYPE_CHECKING:
    import keras
    import pyarrow as pa
    import tensorflow as tf
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

# Which transactions a training run uses, as a Spark SQL condition on silver transactions: the ULB set's, the synthetic
# generator's, those from files and other producers (neither of the two), or every one.
SOURCES: dict[str, str | None] = {
    "ulb": "event_id LIKE 'ulb-tx-%'",
    "synthetic": "event_id LIKE 'syn-%'",
    "file": "event_id NOT LIKE 'ulb-tx-%' AND event_id NOT LIKE 'syn-%'",
    "all": None,
}
# Published AutoML results on the ULB data set, for comparison in the metrics.
ULB_ANCHORS = {"roc_auc": [0.985, 0.992], "recall_at_1pct_fpr": [0.85, 0.88]}
SILVER_TABLES = ("silver_transactions", "silver_fraud_labels")
BATCH_ROWS = 50_000  # examples read and turned into model inputs at a time
# The quadratic regression's features (rows × twice the inputs) are computed for every n-th training example, n the
# smallest keeping them within this many values (400 MB as float64): all of the ULB set's, a sample of a wide file's.
QUADRATIC_CELLS = 50_000_000


class NothingToLearn(UserError, ValueError):
    """The lake lacks the labelled transactions a training run needs: no table yet, one class only, or too few labels."""


@dataclass(frozen=True)
class FraudConfig:
    """One training run's choices; the defaults are the ones measured on the ULB data set (bench/RESULTS.md, "Fraud model variants")."""

    source: str = "ulb"
    cutoff: datetime | None = None  # labels known by then; default now
    test_fraction: float = 0.3
    validation_fraction: float = 0.15  # of the training part, its latest examples
    epochs: int = 20
    batch_size: int = 2048
    fraud_weight: float = 20.0  # a fraud's weight in the MLPs' loss, a legitimate transaction's being 1
    towers: int = 5  # MLPs trained side by side from different initial weights, their logits averaged
    quadratic_c: float = 0.003  # scikit-learn's C (inverse L2 strength) of the quadratic logistic regression; 0: none
    seed: int = 1
    device: Device = "auto"


@dataclass(frozen=True)
class FraudResult:
    """What a training run produced: files to publish, their metrics and the lake versions read."""

    files: dict[str, Path]
    metrics: dict[str, Any]
    lineage: dict[str, int]
    feature_version: str


@dataclass(frozen=True)
class Examples:
    """One part of the time split, oldest first: model inputs, labels (1.0 for fraud) and event times."""

    inputs: np.ndarray
    labels: np.ndarray
    event_time: np.ndarray


@dataclass(frozen=True)
class LabelledTransactions:
    """Labelled examples (``batch_input_columns`` rows and ``is_fraud``) as Spark's executors wrote them: Parquet files
    whose rows, file after file, run oldest first."""

    files: tuple[Path, ...]

    @property
    def rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.files)

    def batches(self, columns: Sequence[str] | None = None, rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """The examples (their ``columns``, default all) in batches, oldest first; only the first ``rows`` if given."""
        import pyarrow.parquet as pq

        left = self.rows if rows is None else rows
        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                if left <= 0:
                    return
                yield batch.slice(0, left)
                left -= batch.num_rows

    def column(self, name: str) -> np.ndarray:
        """One column of every example, as NumPy values (datetime64 for times, None for nulls)."""
        import pyarrow as pa

        chunks = [batch.column(0) for batch in self.batches([name])]
        return pa.chunked_array(chunks).to_numpy() if chunks else np.empty(0)


@contextmanager
def labelled_transactions(spark: SparkSession, lake: Lake, config: FraudConfig) -> Iterator[tuple[LabelledTransactions, dict[str, int]]]:
    """Every selected transaction with a label known by the cut-off, with its card features, oldest first, in a
    temporary folder for the ``with`` block; also the lake table versions read.

    The card features are ``gold_card_features`` as the lake's gold build (``lake.gold.build_card_features``) left it:
    UserError if it has not built it, or built it with other features. Spark's executors sort the examples and write
    them as Parquet, read back here with Arrow: nothing is collected through the Spark driver. The staging folder is a
    local one: a cluster on several hosts needs it shared (it is the temporary folder, ``TMPDIR``).
    """
    from edgelake.lake.spark import read_table

    if config.source not in SOURCES:
        raise ValueError(f"unknown source '{config.source}'; choose one of {', '.join(SOURCES)}")
    try:
        lineage = {name: lake.open(name).version() for name in SILVER_TABLES}
    except UnknownTable as error:
        raise NothingToLearn(f"nothing to learn: {error}") from None
    lineage[GOLD_CARD_FEATURES.name] = _card_features_to_train_on(lake)
    frames = {name: read_table(spark, lake, name, version) for name, version in lineage.items()}
    transactions = frames["silver_transactions"]
    if where := SOURCES[config.source]:
        transactions = transactions.where(where)
    labels = latest_labels(frames["silver_fraud_labels"], config.cutoff or datetime.now(UTC))
    examples = batch_input_columns(transactions, frames[GOLD_CARD_FEATURES.name]).join(labels, "event_id")
    with tempfile.TemporaryDirectory(prefix="edgelake-fraud-examples-") as staging:
        folder = Path(staging) / "examples"
        # A global sort: range partitions, written one file each, named by partition number. (Spark's INT96
        # timestamps: Arrow reads them as Spark collects them, UTC, naive.)
        examples.orderBy("event_time", "event_id").write.parquet(folder.as_uri())
        yield LabelledTransactions(tuple(sorted(folder.glob("part-*.parquet")))), lineage


def _card_features_to_train_on(lake: Lake) -> int:
    """The version of ``gold_card_features`` to read; UserError unless the gold build made it with this ``FEATURE_VERSION``."""
    build = "build the gold tables first (edgelake lake build-gold)"
    try:
        table = lake.open(GOLD_CARD_FEATURES.name)
    except UnknownTable as error:
        raise UserError(f"no card features to train on: {error}; {build}") from None
    if not has_card_features(table, FEATURE_VERSION):
        raise UserError(f"{GOLD_CARD_FEATURES.name} was not built with this code's feature version {FEATURE_VERSION}; {build}")
    return table.version()


def latest_labels(labels: DataFrame, cutoff: datetime) -> DataFrame:
    """Each transaction's latest label as known at ``cutoff``: ``event_id`` (the transaction's) and ``is_fraud``.

    Labels with ``event_time`` after the cut-off are ignored; the latest of the rest has the
    latest ``event_time``, among equal ones the one ingested last (as in ``gold_fraud_rates``).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest = Window.partitionBy("transaction_id").orderBy(
        F.desc("event_time"), F.desc("_ingest_time"), F.desc("_partition"), F.desc("_offset")
    )
    return (
        labels.where(F.col("event_time") <= F.lit(cutoff))
        .withColumn("rank", F.row_number().over(newest))
        .where("rank = 1")
        .select(F.col("transaction_id").alias("event_id"), "is_fraud")
    )


def split_by_time(examples: LabelledTransactions, config: FraudConfig) -> tuple[InputSpec, Examples, Examples, Examples]:
    """The model's inputs, decided from the training part, and the train, validation and test examples (oldest first):
    the test part is the latest, validation the latest of the rest. Raise NothingToLearn if a part lacks frauds or
    legitimate transactions.

    The input matrix is filled batch by batch: the examples' columns are never all in memory at once."""
    labels = examples.column("is_fraud").astype(np.float32)
    times = examples.column("event_time")
    if np.any(times[1:] < times[:-1]):
        raise RuntimeError("the examples are not in event-time order")  # Spark's sort failed us: a bug, not bad data
    test_start = int(len(labels) * (1 - config.test_fraction))
    validation_start = int(test_start * (1 - config.validation_fraction))
    parts = {"train": slice(0, validation_start), "validation": slice(validation_start, test_start), "test": slice(test_start, len(labels))}
    for name, part in parts.items():
        if len(np.unique(labels[part])) < 2:
            missing = "legitimate" if labels[part].all() else "fraud"
            raise NothingToLearn(f"the {name} part of the time split has {len(labels[part])} transactions, no {missing} one: too few labels")
    profile = InputProfile()
    for batch in examples.batches(rows=validation_start):
        profile.add(batch)
    spec = profile.spec()
    inputs = np.empty((len(labels), len(spec.names)), dtype=np.float32)
    done = 0
    for batch in examples.batches():
        inputs[done : done + batch.num_rows] = spec.matrix(arrow_columns(batch))
        done += batch.num_rows
    train, validation, test = (Examples(inputs[p], labels[p], times[p]) for p in parts.values())
    return spec, train, validation, test


def build_model(train: Examples, towers: int = FraudConfig.towers) -> keras.Model:
    """Normalization to the training inputs' mean and variance, then ``towers`` small MLPs (64-32, dropout 0.2) side by
    side, each giving a fraud logit: the output has a column per tower. Trained together (each on its own loss, the
    same batches), they differ by their initial weights; ``mean_logit`` averages them."""
    import keras

    mean, variance = _moments(train.inputs)
    # An input constant in training (every card feature of a data set with one transaction per card) is only
    # centred: scaled by its zero variance, any other value met when scoring would become enormous.
    variance[variance == 0] = 1.0
    normalization = keras.layers.Normalization(mean=mean, variance=variance, name="normalization")
    inputs = keras.Input((train.inputs.shape[1],), name="inputs")
    normalized = normalization(inputs)
    logits = []
    for tower in range(towers):
        hidden = normalized
        for width in (64, 32):
            hidden = keras.layers.Dense(width, activation="relu")(hidden)
            hidden = keras.layers.Dropout(0.2)(hidden)
        logits.append(keras.layers.Dense(1, dtype="float32", name=f"logit_{tower}")(hidden))
    output = keras.layers.Concatenate(dtype="float32", name="tower_logits")(logits) if towers > 1 else logits[0]
    return keras.Model(inputs, output, name="fraud_towers")


def _moments(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and variance in float64, ``BATCH_ROWS`` rows at a time: never a float64 copy of the whole matrix."""
    mean = np.zeros(inputs.shape[1])
    for start in range(0, len(inputs), BATCH_ROWS):
        mean += inputs[start : start + BATCH_ROWS].sum(axis=0, dtype=np.float64)
    mean /= len(inputs)
    squares = np.zeros(inputs.shape[1])
    for start in range(0, len(inputs), BATCH_ROWS):
        squares += np.square(inputs[start : start + BATCH_ROWS] - mean).sum(axis=0)
    return mean, squares / len(inputs)


def mean_logit(towers_model: keras.Model) -> keras.Model:
    """The model giving the mean of ``towers_model``'s logits (a fixed layer, so the exported graph stays one matrix in, one
    column out); the model itself if it has one tower."""
    import keras

    towers = towers_model.output.shape[-1]
    if towers == 1:
        return towers_model
    mean = keras.layers.Dense(1, use_bias=False, dtype="float32", name="logit", trainable=False)
    logit = mean(towers_model.output)
    mean.set_weights([np.full((towers, 1), 1 / towers, np.float32)])
    return keras.Model(towers_model.input, logit, name="fraud_logit")


def with_quadratic_logit(logit_model: keras.Model, train: Examples, c: float) -> keras.Model:
    """``logit_model`` with a second logit beside its own: a logistic regression on the normalized inputs and the
    squares of those that are not 0/1 flags (a quadratic boundary: the farther a transaction lies from the usual ones, the more suspect), fitted by
    scikit-learn on ``train`` with an L2 penalty of inverse strength ``c`` and no class weights. It is convex, so its
    fit does not depend on the seed; it is computed inside the model from the MLPs' normalization layer, in float32.
    It ranks the frauds that look least like the usual transactions, among which the MLPs' logits, learnt from a few
    hundred frauds, say little. On wide inputs it learns from every n-th training example (``QUADRATIC_CELLS``). The
    model's output is both logits, the MLPs' first."""
    import keras
    from sklearn.linear_model import LogisticRegression

    every = math.ceil(train.inputs.shape[0] * 2 * train.inputs.shape[1] / QUADRATIC_CELLS)
    # A 0/1 input's square is an affine function of it: only the others are squared.
    sample = train.inputs[::every]
    squared = np.flatnonzero(~((sample == 0) | (sample == 1)).all(axis=0))
    normalized = logit_model.get_layer("normalization").output
    select = keras.layers.Dense(len(squared), use_bias=False, dtype="float32", name="graded_inputs", trainable=False)
    graded = select(normalized)
    select.set_weights([np.eye(train.inputs.shape[1], dtype=np.float32)[:, squared]])
    squares = keras.layers.Multiply(dtype="float32", name="squares")([graded, graded])
    terms = keras.layers.Concatenate(dtype="float32", name="quadratic_terms")([normalized, squares])
    features = keras.Model(logit_model.input, terms).predict(sample, batch_size=8192, verbose=0)
    regression = LogisticRegression(C=c, max_iter=5000).fit(features, train.labels[::every])
    dense = keras.layers.Dense(1, dtype="float32", name="quadratic_logit", trainable=False)
    quadratic = dense(terms)
    dense.set_weights([regression.coef_.astype(np.float32).reshape(-1, 1), regression.intercept_.astype(np.float32)])
    logits = keras.layers.Concatenate(dtype="float32", name="logits")([logit_model.output, quadratic])
    return keras.Model(logit_model.input, logits, name="fraud_logits")


def calibrated(logit_model: keras.Model, validation: Examples) -> keras.Model:
    """The model with Platt scaling fitted on ``validation``: it outputs a fraud probability. Where the model gives
    several logits (the MLPs' and the quadratic regression's), the scaling is a logistic regression on all of them,
    so the validation slice, the latest examples before the test part, also decides how much each one counts."""
    import keras
    from sklearn.linear_model import LogisticRegression

    logits = logit_model.predict(validation.inputs, batch_size=8192, verbose=0).reshape(len(validation.labels), -1)
    platt = LogisticRegression(C=1e6).fit(logits, validation.labels)
    scale = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="calibrated", trainable=False)
    probability = scale(logit_model.output)
    scale.set_weights([platt.coef_.astype(np.float32).reshape(-1, 1), platt.intercept_.astype(np.float32)])
    return keras.Model(logit_model.input, probability, name="fraud")


def fitted_model(train: Examples, validation: Examples, config: FraudConfig, strategy: tf.distribute.Strategy) -> tuple[keras.Model, float]:
    """The calibrated fraud model learnt from ``train`` (the MLP towers under ``strategy``, then the quadratic regression
    unless ``config.quadratic_c`` is 0) and the seconds the towers' fit took."""
    import keras

    with strategy.scope():
        towers_model = build_model(train, config.towers)
        towers_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    # Every tower learns the same labels (one column each); frauds weigh ``fraud_weight`` as sample weights, since Keras
    # reads labels with several columns as one-hot classes when it turns a class_weight into weights.
    labels = np.repeat(train.labels.reshape(-1, 1), config.towers, axis=1)
    weights = np.where(train.labels == 1, config.fraud_weight, 1.0).astype(np.float32)
    started = time.perf_counter()
    towers_model.fit(
        train.inputs, labels, sample_weight=weights, batch_size=config.batch_size, epochs=config.epochs, verbose=0, shuffle=True,
    )
    fit_s = time.perf_counter() - started
    logit_model = mean_logit(towers_model)
    if config.quadratic_c > 0:
        logit_model = with_quadratic_logit(logit_model, train, config.quadratic_c)
    return calibrated(logit_model, validation), fit_s


def train_fraud(spark: SparkSession, lake: Lake, out_dir: Path, config: FraudConfig = FraudConfig()) -> FraudResult:
    """Train, calibrate, evaluate on the latest transactions, and write the model, its TFLite twin, metrics and plots."""
    from edgelake.interpreters import load_interpreter, predict
    from edgelake.training.drift import DISTRIBUTIONS_FILE, TrainingDistributions
    from edgelake.training.tflite import float_tflite

    started = time.perf_counter()
    with labelled_transactions(spark, lake, config) as (examples, lineage):
        labelled = examples.column("is_fraud")
        if len(labelled) == 0 or len(np.unique(labelled)) < 2:
            raise NothingToLearn(f"source '{config.source}' has {len(labelled)} labelled transactions, not both classes: nothing to learn")
        spec, train, validation, test = split_by_time(examples, config)
        test_fields = {name: examples.column(name)[-len(test.labels) :].tolist() for name in WATCHED_FIELDS}
    examples_s = time.perf_counter() - started
    set_seeds(config.seed)
    strategy, where = training_strategy(config.device)
    fit_started = time.perf_counter()
    model, mlp_fit_s = fitted_model(train, validation, config, strategy)
    fit_s = time.perf_counter() - fit_started  # the towers' fit, the quadratic regression's and the calibration
    validation_scores = model.predict(validation.inputs, batch_size=8192, verbose=0).ravel()
    threshold = best_f1_threshold(validation.labels, validation_scores)  # the scorer's review threshold
    scores = model.predict(test.inputs, batch_size=8192, verbose=0).ravel()

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"fraud.keras": out_dir / "fraud.keras", "fraud.tflite": out_dir / "fraud.tflite"}
    model.save(files["fraud.keras"])
    files["fraud.tflite"].write_bytes(float_tflite(model))
    tflite_scores = predict(load_interpreter(files["fraud.tflite"]), test.inputs).ravel()
    metrics = {
        **binary_metrics(test.labels, scores, threshold),
        # 95% percentile bootstrap intervals of the ranking metrics (1,000 resamples of the test part, frauds and
        # legitimate transactions drawn apart), flat so that the registry's manifest and `edgelake models show` carry them.
        **{f"{name}_{end}": getattr(estimate, end) for name, estimate in bootstrap_intervals(test.labels, scores).items() for end in ("low", "high")},
        "decline_threshold": decline_threshold(validation.labels, validation_scores, threshold),
        "tflite_max_abs_diff": float(np.max(np.abs(tflite_scores - scores))),
        "split": {
            "train": len(train.labels), "validation": len(validation.labels), "test": len(test.labels),
            "test_from": str(test.event_time[0]), "test_until": str(test.event_time[-1]),
        },
        "source": config.source,
        "inputs": spec.report(),
        "device": where,
        "train_samples_per_s": round(len(train.labels) * config.epochs / mlp_fit_s, 1),  # the towers' fit (each sample feeds every tower)
        "examples_seconds": round(examples_s, 1),  # Spark: examples assembled; here: inputs decided and computed
        "fit_seconds": round(fit_s, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # this process's, Spark's JVM aside
    }
    if config.source == "ulb":
        metrics["anchors"] = ULB_ANCHORS
    plots = write_plots(test.labels, scores, out_dir, "fraud (test: latest transactions)")
    files.update({path.name: path for path in plots.values()})
    # Drift is measured against the test part (the latest examples): the traffic this version's metrics describe.
    distributions = TrainingDistributions.of(spec.names, test.inputs, scores, test_fields)
    files[DISTRIBUTIONS_FILE] = distributions.write(out_dir / DISTRIBUTIONS_FILE)
    files[INPUTS_FILE] = spec.write(out_dir / INPUTS_FILE)
    files["metrics.json"] = out_dir / "metrics.json"
    files["metrics.json"].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    logger.info("fraud model: AUPRC %.3f, ROC-AUC %.3f on %d test transactions", metrics["auprc"], metrics["roc_auc"], len(test.labels))
    return FraudResult(files, metrics, lineage, INPUTS_VERSION)
