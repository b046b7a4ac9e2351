"""Online fraud scoring: the production fraud model, each card's history in process, and the decision thresholds.

The model is the registry's production version of ``fraud``, verified against the local
signing key's public half (``<data_dir>/keys``) or else the registry's own, and served
only if its manifest's ``feature_version`` is this code's ``INPUTS_VERSION``. Its TFLite
file runs under LiteRT; the Keras file (which needs TensorFlow, imported then) is the
fallback where the TFLite file cannot be loaded. The registry is checked for a new
production version at most every ``score_model_check_s`` seconds. A production version that
fails these checks or does not load is refused (logged, and named by the
``edgelake_fraud_model_refused_version`` metric) and the last good one keeps answering: the
version in use, or for a server that has none yet, the newest earlier production version
that passes (``registry.production_line``).

The fraud model's canary runs in shadow: the registry's ``canary`` version of ``fraud``,
checked and loaded the same way, scores every transaction beside production from the same
inputs, and its scores are sent to the topic marked ``shadow`` for the rollout gate to
judge on matured labels; the caller only ever gets production's.

Production's traffic is watched for drift: each transaction scored is counted into a ``DriftWindow`` over the
version's training distributions (``training_distributions.json``), started afresh whenever another version is
served; a version published without them is served unwatched.

Card features come from one ``CardHistory`` per process (or a ``RedisCardHistory`` shared
by every replica, as the settings choose), fed by the transactions scored here and, where
the app runs an ``api.card_feed.CardFeed``, by those read from the transactions topic
(``record``), so they equal Spark's batch features when each card's transactions arrive in
event-time order (see ``CardHistory`` for same-instant ties). A transaction both scored and
read from the topic counts once: the history keeps event ids. Both, and the model's inputs
made from them, are ``lake.features``'s online computations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from redis.exceptions import RedisError

from edgelake.api.drift import DriftWindow
from edgelake.api.metrics import ScoreMetrics
from edgelake.contracts import EARLIEST_EVENT_TIME, MAX_CLOCK_SKEW, Transaction
from edgelake.lake.features.definitions import FeatureValues
from edgelake.lake.features.model_inputs import INPUTS_FILE, INPUTS_VERSION, InputSpec, online_input_columns
from edgelake.lake.features.online import CardHistory
from edgelake.lake.features.online_redis import RedisCardHistory
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.drift import DISTRIBUTIONS_FILE, TrainingDistributions

MODEL_NAME = "fraud"
TFLITE_FILE = f"{MODEL_NAME}.tflite"
KERAS_FILE = f"{MODEL_NAME}.keras"

Decision = Literal["approve", "review", "decline"]
log = logging.getLogger(__name__)


# The largest amount or attribute value scored: beyond it the card's window sums overflow (math.fsum raises) and the
# model's float32 inputs become infinite. The contract admits any finite value and any time; the scorer, and card
# histories, do not (``unscorable``).
MAX_MAGNITUDE = 1e15


def unscorable(transaction: Transaction, now: datetime) -> list[tuple[tuple[str, ...], str]]:
    """Why a transaction may not be scored nor enter a card's history: ``(field path, reason)`` for each field; empty if it may."""
    problems: list[tuple[tuple[str, ...], str]] = []
    values: list[tuple[tuple[str, ...], float]] = [(("amount",), transaction.amount)]
    values += [(("attributes", name), value) for name, value in transaction.attributes.items()]
    for field, value in values:
        if abs(value) > MAX_MAGNITUDE:
            problems.append((field, f"must be at most {MAX_MAGNITUDE:g} in magnitude to be scored"))
    # Ingest's window for event times: one dated near year 1 overflowed the card windows, and one dated far ahead
    # made its card's history look 7 days stale to every later transaction, which then scored with empty windows.
    if transaction.event_time < EARLIEST_EVENT_TIME:
        problems.append((("event_time",), f"must be {EARLIEST_EVENT_TIME:%Y-%m-%d} or later to be scored"))
    elif transaction.event_time > now + MAX_CLOCK_SKEW:
        problems.append((("event_time",), "must be at most a day ahead of the server's clock to be scored"))
    return problems


class ModelUnavailable(RuntimeError):
    """No production fraud model can be served: none exists, it fails verification or its features differ."""


class CardStateUnavailable(RuntimeError):
    """The shared online card state (Redis) cannot be reached."""


def card_history(settings: Settings) -> CardHistory | RedisCardHistory:
    """The online card state the settings choose: in this process, or in Redis, shared by every replica."""
    if settings.online_features == "redis":
        import redis

        return RedisCardHistory(redis.Redis.from_url(settings.redis_url))
    return CardHistory()


@dataclass(frozen=True)
class Thresholds:
    """The scores from which a transaction is sent to review and declined."""

    review: float
    decline: float


# For a version whose manifest carries no thresholds of its own (one published before they were recorded).
DEFAULT_THRESHOLDS = Thresholds(review=0.5, decline=0.9)


def served_thresholds(metrics: dict[str, float], settings: Settings) -> Thresholds:
    """A version's decision thresholds: the settings' where set, else the version's own from its validation (its metrics
    ``threshold``, the best-F1 one, and ``decline_threshold``), else ``DEFAULT_THRESHOLDS``; decline never below review."""
    own = metrics.get("threshold", DEFAULT_THRESHOLDS.review), metrics.get("decline_threshold", DEFAULT_THRESHOLDS.decline)
    review = settings.score_review_threshold if settings.score_review_threshold is not None else own[0]
    decline = settings.score_decline_threshold if settings.score_decline_threshold is not None else own[1]
    return Thresholds(review, max(review, decline))


@dataclass(frozen=True)
class ServedModel:
    """A verified production version, how to run it (float32 inputs to fraud probabilities), its inputs and its decision
    thresholds."""

    version: int
    runtime: str
    predict: Callable[[np.ndarray], np.ndarray]
    inputs: InputSpec = InputSpec()
    thresholds: Thresholds = DEFAULT_THRESHOLDS


@dataclass(frozen=True)
class ModelStatus:
    """Whether a production fraud model is served now: its version, or why not; and the version scoring in shadow, if any."""

    loaded: bool
    version: int | None
    detail: str | None
    shadow_version: int | None = None


@dataclass(frozen=True)
class ShadowScore:
    """The shadow (canary) version's score of a transaction and the decision it would have led to."""

    version: int
    score: float
    decision: Decision


@dataclass(frozen=True)
class Scored:
    """One transaction's score, decision and the card features it was scored with, and the shadow version's score if one runs."""

    transaction: Transaction
    score: float
    decision: Decision
    features: FeatureValues
    shadow: ShadowScore | None = None


def decide(score: float, review: float, decline: float) -> Decision:
    """Decline from ``decline``, review from ``review``, approve below."""
    if score >= decline:
        return "decline"
    return "review" if score >= review else "approve"


class Scorer:
    """Scores transactions with the production fraud model; safe to share between request threads."""

    def __init__(self, settings: Settings, models: registry.Registry, metrics: ScoreMetrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self._models = models
        self._history = card_history(settings)
        self._history_lock = threading.Lock()
        self._model_lock = threading.Lock()  # guards loading and the (not thread-safe) interpreter
        self._model: ServedModel | ModelUnavailable = ModelUnavailable(f"no production version of model '{MODEL_NAME}' loaded yet")
        self._shadow: ServedModel | None = None
        self._drift: DriftWindow | None = None
        self._refused: dict[int, str] = {}  # versions that failed their checks in this process, and why
        self._next_check = 0.0

    def model(self) -> ServedModel:
        """The model in use, reloaded first if the production version changed; ModelUnavailable if none can be served."""
        with self._model_lock:
            if time.monotonic() >= self._next_check:
                self._refresh()
                self._next_check = time.monotonic() + self.settings.score_model_check_s
            if isinstance(self._model, ModelUnavailable):
                raise self._model
            return self._model

    def status(self) -> ModelStatus:
        """The model in use (checking the registry as ``model`` does) and why a newer production version is not, or why none is;
        never raises ModelUnavailable."""
        try:
            version = self.model().version
        except ModelUnavailable as error:
            return ModelStatus(False, None, str(error))
        newer = [f"refused: {why}" for refused, why in self._refused.items() if refused > version]
        shadow = self._shadow
        return ModelStatus(True, version, "; ".join(newer) or None, shadow.version if shadow is not None else None)

    def drift(self) -> DriftWindow | None:
        """The drift window of the production version served; None while none is, or it has no training distributions."""
        return self._drift

    def record(self, transactions: Sequence[Transaction]) -> None:
        """Add ``transactions`` to their cards' histories without scoring them; event ids already held are skipped."""
        with self._history_lock, _card_state_errors():
            for t in transactions:
                self._history.add(t.card_id, t.event_time, t.amount, t.merchant_id, t.event_id)

    def score(self, transactions: Sequence[Transaction]) -> tuple[ServedModel, list[Scored]]:
        """Score ``transactions`` in order, adding each to its card's history (once per event id); the model used and the scores."""
        model = self.model()
        with self._history_lock, _card_state_errors():
            features = [self._history.add(t.card_id, t.event_time, t.amount, t.merchant_id, t.event_id) for t in transactions]
        columns = online_input_columns(transactions, features)
        inputs = model.inputs.matrix(columns)
        shadow = self._shadow
        shadow_inputs = None if shadow is None else inputs if shadow.inputs == model.inputs else shadow.inputs.matrix(columns)
        with self._model_lock:
            scores = model.predict(inputs).reshape(-1)
            shadow_scores = shadow.predict(shadow_inputs).reshape(-1) if shadow is not None and shadow_inputs is not None else None
        drift = self._drift
        if drift is not None and drift.version == model.version:
            drift.add(inputs, scores, transactions)
        shadows: list[ShadowScore | None] = [None] * len(transactions)
        if shadow is not None and shadow_scores is not None:
            shadows = [ShadowScore(shadow.version, *_decided(score, shadow.thresholds)) for score in shadow_scores]
        scored = []
        for transaction, score, values, shadow_score in zip(transactions, scores, features, shadows, strict=True):
            probability, decision = _decided(score, model.thresholds)
            self._metrics.decisions.labels(decision).inc()
            scored.append(Scored(transaction, probability, decision, values, shadow_score))
        return model, scored

    def _refresh(self) -> None:
        self._refresh_production()
        self._refresh_shadow()

    def _refresh_production(self) -> None:
        """Serve the first version of the production line that passes its checks: the production version, else the one in
        use or an earlier production version; remember why refused ones were."""
        try:
            line = registry.production_line(self._models, MODEL_NAME)
        except registry.UnknownModel:
            line = []
        in_use = None if isinstance(self._model, ModelUnavailable) else self._model
        for version in line:
            if in_use is not None and version == in_use.version:
                break
            if version in self._refused:
                continue
            try:
                self._model = self._load(version)
            except ModelUnavailable as error:
                self._refuse(version, error)
                continue
            log.info("serving %s v%d (%s)", MODEL_NAME, version, self._model.runtime)
            self._drift = self._drift_window(self._model)
            break
        else:
            if not line:
                self._model = ModelUnavailable(f"no version of model '{MODEL_NAME}' is in production in the registry at {self._models.location}")
                self._drift = None
            elif in_use is None:
                self._model = ModelUnavailable("; ".join(self._refused[v] for v in line))
        self._metrics.model_version.set(0 if isinstance(self._model, ModelUnavailable) else self._model.version)

    def _refresh_shadow(self) -> None:
        """Run the canary version in shadow if it passes the production checks; none if there is no canary or it fails them."""
        try:
            version = registry.current(self._models, MODEL_NAME, "canary")
        except registry.UnknownModel:
            version = None
        if version is None or version in self._refused:
            self._shadow = None
        elif self._shadow is None or self._shadow.version != version:
            try:
                self._shadow = self._load(version)
                log.info("shadow scoring with %s v%d (%s)", MODEL_NAME, version, self._shadow.runtime)
            except ModelUnavailable as error:
                self._refuse(version, error)
                self._shadow = None
        self._metrics.shadow_version.set(0 if self._shadow is None else self._shadow.version)

    def _drift_window(self, model: ServedModel) -> DriftWindow | None:
        """An empty drift window over ``model``'s training distributions; None if its manifest lists none or they do not read."""
        version = model.version
        held = registry.get(self._models, MODEL_NAME, version)
        if DISTRIBUTIONS_FILE not in held.manifest.files:
            log.warning("%s v%d has no %s: its traffic is not watched for drift", MODEL_NAME, version, DISTRIBUTIONS_FILE)
            return None
        try:
            distributions = TrainingDistributions.read(held.path / DISTRIBUTIONS_FILE, model.inputs.names)
        except (OSError, ValueError) as error:
            log.warning("%s v%d: %s does not read (%s): its traffic is not watched for drift", MODEL_NAME, version, DISTRIBUTIONS_FILE, error)
            return None
        settings = self.settings
        return DriftWindow(version, distributions, settings.drift_window, settings.drift_min_transactions, settings.drift_snapshot_s)

    def _refuse(self, version: int, error: ModelUnavailable) -> None:
        self._refused[version] = str(error)
        self._metrics.model_refused.set(version)
        log.error("refusing %s v%d: %s", MODEL_NAME, version, error)

    def _load(self, version: int) -> ServedModel:
        key = registry.local_public_key(self.settings.data_dir / registry.KEYS_DIR)
        try:
            problems = registry.verify(self._models, MODEL_NAME, version, key)
            held = registry.get(self._models, MODEL_NAME, version)
        except (OSError, ValueError) as error:
            raise ModelUnavailable(f"{MODEL_NAME} v{version} cannot be verified: {error}") from None
        manifest = held.manifest
        if problems:
            raise ModelUnavailable(f"{MODEL_NAME} v{version} fails verification: {'; '.join(problems)}")
        if manifest.feature_version != INPUTS_VERSION:
            raise ModelUnavailable(
                f"{MODEL_NAME} v{version} was trained on inputs version {manifest.feature_version}; this server computes {INPUTS_VERSION}"
            )
        directory = held.path
        if INPUTS_FILE not in manifest.files:
            raise ModelUnavailable(f"{MODEL_NAME} v{version} has no {INPUTS_FILE}: its inputs are unknown")
        try:
            inputs = InputSpec.read(directory / INPUTS_FILE)
        except (OSError, ValueError) as error:
            raise ModelUnavailable(f"{MODEL_NAME} v{version}: {error}") from None
        runnable = _runnable(version, directory, set(manifest.files))
        return replace(runnable, inputs=inputs, thresholds=served_thresholds(manifest.metrics, self.settings))


def _runnable(version: int, directory: Path, files: set[str]) -> ServedModel:
    """The version's TFLite file under LiteRT, else (absent, or not loading) its Keras file."""
    try:
        return _tflite(version, directory / TFLITE_FILE) if TFLITE_FILE in files else _keras(version, directory / KERAS_FILE)
    except (OSError, ValueError, RuntimeError, ImportError) as error:
        if TFLITE_FILE in files and KERAS_FILE in files:
            log.warning("%s v%d: %s does not load (%s); falling back to %s", MODEL_NAME, version, TFLITE_FILE, error, KERAS_FILE)
            return _keras(version, directory / KERAS_FILE)
        raise ModelUnavailable(f"{MODEL_NAME} v{version} does not load: {error}") from None


def _decided(score: float, thresholds: Thresholds) -> tuple[float, Decision]:
    """A model output as a probability in [0, 1] and the decision ``thresholds`` make of it."""
    probability = min(max(float(score), 0.0), 1.0)
    return probability, decide(probability, thresholds.review, thresholds.decline)


def _tflite(version: int, path: Path) -> ServedModel:
    from edgelake.interpreters import load_interpreter, predict, runtime_name

    interpreter = load_interpreter(path)
    return ServedModel(version, runtime_name(interpreter), lambda x: predict(interpreter, x))


def _keras(version: int, path: Path) -> ServedModel:
    import keras

    try:
        model = keras.saving.load_model(path)
    except (OSError, ValueError) as error:
        raise ModelUnavailable(f"{MODEL_NAME} v{version} does not load: {error}") from None
    return ServedModel(version, "keras", lambda x: np.asarray(model.predict(x, verbose=0), np.float32))


@contextmanager
def _card_state_errors() -> Iterator[None]:
    """Redis failures as CardStateUnavailable; the in-process state raises none."""
    try:
        yield
    except RedisError as error:
        raise CardStateUnavailable(f"the online card state cannot be reached: {error}") from None
