"""The fraud shadow's evidence for the rollout gate: its scores and production's on the transactions whose labels matured.

Fraud labels come late (a chargeback days after the transaction), so a transaction is judged only once its label
maturity window has passed in event time: the lake's clock is the latest event time it holds (a transaction or a
label), and a transaction is matured when it is at least the window older. A matured transaction without a label was
not charged back: it counts as legitimate; with labels, its latest one counts.

The scores are the shadow (canary) version's since the rollout policy put it on, paired with the production score
made for the same request (the scorer sends both with one event time). Both sides are measured on the same matured
transactions: AUPRC, ROC-AUC and recall at 1% FPR, and the canary's minus production's with paired bootstrap
intervals. The gate (:func:`edgelake.training.registry.rollout.judge`) decides on AUPRC's interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import numpy as np
import pyarrow as pa
from deltalake import QueryBuilder

from edgelake.contracts import FraudLabel, FraudScore, Transaction
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import SILVER
from edgelake.training.evaluation import RANKING_METRICS, Estimate, bootstrap_intervals, paired_differences
from edgelake.training.registry.layout import Registry
from edgelake.training.registry.rollout import Comparison, Interval, Measured, RolloutPolicy, RolloutRules, set_rollout, settle
from edgelake.training.registry.stages import Transition

MODEL_NAME = "fraud"
SCORES, LABELS, TRANSACTIONS = (SILVER[event.topic].name for event in (FraudScore, FraudLabel, Transaction))
GATE_METRIC = "auprc"
METRIC_NAMES = {"auprc": "AUPRC", "roc_auc": "ROC-AUC", "recall_at_1pct_fpr": "recall at 1% FPR"}


@dataclass(frozen=True)
class ScoredPairs:
    """The canary's and production's scores of each transaction scored in shadow, one pair per transaction, and which
    of them matured with what label."""

    canary: np.ndarray
    production: np.ndarray
    production_versions: frozenset[int]
    is_fraud: np.ndarray
    matured: np.ndarray
    clock: datetime | None

    @classmethod
    def none(cls) -> ScoredPairs:
        empty = np.zeros(0)
        return cls(empty, empty, frozenset(), empty.astype(bool), empty.astype(bool), None)


class MaturedEvidence:
    """What the lake knows of a fraud canary running in shadow (a :class:`~edgelake.training.registry.rollout.CanaryEvidence`)."""

    def __init__(self, version: int, pairs: ScoredPairs, maturity: timedelta, elapsed_s: float) -> None:
        self.version = version
        self.pairs = pairs
        self.maturity = maturity
        self._elapsed_s = elapsed_s

    @property
    def elapsed_s(self) -> float:
        return self._elapsed_s

    @property
    def matured(self) -> int:
        return int(self.pairs.matured.sum())

    @property
    def matured_frauds(self) -> int:
        return int((self.pairs.matured & self.pairs.is_fraud).sum())

    def failure(self) -> str | None:
        """None: a shadow answers nobody, so nothing but its judged scores can fail it."""
        return None

    def shortfall(self, rules: RolloutRules) -> list[str]:
        """Matured scored transactions short of ``min_labelled``, or none of them a fraud, or legitimate."""
        pairs, lacking = self.pairs, []
        days = self.maturity / timedelta(days=1)
        if self.matured < rules.min_labelled:
            lacking.append(
                f"{self.matured:,} of {rules.min_labelled:,} scored transactions with matured labels "
                f"({len(pairs.matured):,} scored in shadow; labels mature {days:g} days after the transaction)"
            )
        elif self.matured_frauds in (0, self.matured):
            lacking.append(f"the {self.matured:,} matured transactions are all {'legitimate' if self.matured_frauds == 0 else 'frauds'}")
        if len(pairs.production_versions) > 1:
            versions = ", ".join(f"v{v}" for v in sorted(pairs.production_versions))
            lacking.append(f"production changed while the shadow ran ({versions}): set the rollout policy again to start afresh")
        return lacking

    @cached_property
    def estimates(self) -> tuple[dict[str, Estimate], dict[str, Estimate], dict[str, Estimate]]:
        """The canary's metrics, production's, and the canary's minus production's, each with its bootstrap interval."""
        pairs, matured = self.pairs, self.pairs.matured
        labels, canary, production = pairs.is_fraud[matured].astype(np.float64), pairs.canary[matured], pairs.production[matured]
        return bootstrap_intervals(labels, canary), bootstrap_intervals(labels, production), paired_differences(labels, canary, production)

    def comparison(self) -> Comparison:
        """The sides on AUPRC, the interval of their difference, and every metric's difference in the basis."""
        canary, production, difference = self.estimates
        (production_version,) = self.pairs.production_versions
        differences = "; ".join(f"{METRIC_NAMES[name]} {difference[name].signed()}" for name in RANKING_METRICS)
        basis = (
            f"{self.matured_frauds:,} frauds among {self.matured:,} matured transactions; canary minus production: {differences} "
            f"(95% paired bootstrap intervals)"
        )
        gap = difference[GATE_METRIC]
        return Comparison(
            Measured(self.version, canary[GATE_METRIC].value, self.matured, METRIC_NAMES[GATE_METRIC]),
            Measured(production_version, production[GATE_METRIC].value, self.matured, METRIC_NAMES[GATE_METRIC]),
            basis,
            Interval(gap.low, gap.high),
        )


def shadow_rules(version: int, maturity: timedelta) -> RolloutRules:
    """The rules a fraud canary enters shadow under: it scores every transaction, is promoted only when its AUPRC is
    better than production's beyond the interval, and has three maturity windows (at most 30 days) to show it."""
    deadline_s = min(max(3 * maturity.total_seconds(), 3600.0), 30 * 86_400.0)
    return RolloutRules(canary_percent=100, canary_version=version, max_accuracy_drop=0.0, deadline_s=deadline_s)


def put_in_shadow(registry: Registry, version: int, maturity: timedelta, *, actor: str | None = None) -> RolloutPolicy:
    """Put fraud ``version`` (a candidate or the canary) in shadow under :func:`shadow_rules`, its evidence starting now."""
    return set_rollout(registry, MODEL_NAME, shadow_rules(version, maturity), actor=actor)


def settle_shadow(lake: Lake, registry: Registry, maturity: timedelta, *, actor: str | None) -> list[Transition]:
    """Judge the fraud canary of ``registry`` in shadow on ``lake``'s matured labels and promote or reject it when the
    evidence says so; the transitions made."""
    return settle(registry, MODEL_NAME, lambda policy: matured_evidence(lake, policy, maturity), actor=actor)


def matured_evidence(lake: Lake, policy: RolloutPolicy, maturity: timedelta, now: datetime | None = None) -> MaturedEvidence:
    """The evidence on ``policy``'s canary version (which must be set) from the lake's silver tables as they are now."""
    assert policy.canary_version is not None, "a policy without a canary has no evidence"
    since = policy.updated or datetime.fromtimestamp(0, UTC)
    elapsed_s = ((now or datetime.now(UTC)) - since).total_seconds()
    return MaturedEvidence(policy.canary_version, scored_pairs(lake, policy.canary_version, since, maturity), maturity, elapsed_s)


def scored_pairs(lake: Lake, version: int, since: datetime, maturity: timedelta) -> ScoredPairs:
    """The pairs of shadow score (of ``version``, scored from ``since``) and production score, per transaction."""
    tables = {name: lake.find(name) for name in (SCORES, LABELS, TRANSACTIONS)}
    scores, labels, transactions = tables.values()
    if scores is None or transactions is None or "shadow" not in {field.name for field in scores.schema().fields}:
        return ScoredPairs.none()
    query = QueryBuilder()
    for name, table in tables.items():
        if table is not None:
            query.register(name, table)
    clock = _single(query, f"SELECT max(event_time) AS clock FROM {TRANSACTIONS}")
    if labels is not None:
        clock = max(clock, _single(query, f"SELECT max(event_time) AS clock FROM {LABELS}"))
    label = (
        f"LEFT JOIN (SELECT transaction_id, is_fraud, row_number() OVER (PARTITION BY transaction_id "
        f"ORDER BY event_time DESC, _ingest_time DESC, _partition DESC, _offset DESC) AS nth FROM {LABELS}) l "
        "ON l.transaction_id = p.transaction_id AND l.nth = 1"
        if labels is not None
        else ""
    )
    rows = _table(
        query,
        f"""
        WITH pairs AS (
            SELECT s.transaction_id, s.score AS canary, p.score AS production, p.model_version AS production_version,
                   row_number() OVER (PARTITION BY s.transaction_id ORDER BY s.event_time, s.event_id) AS nth
            FROM {SCORES} s JOIN {SCORES} p
              ON p.transaction_id = s.transaction_id AND p.event_time = s.event_time AND p.shadow IS NOT TRUE
            WHERE s.shadow AND s.model_version = {int(version)} AND s.event_time >= {_timestamp(since)}
        )
        SELECT p.canary, p.production, p.production_version,
               {"coalesce(l.is_fraud, false)" if labels is not None else "false"} AS is_fraud,
               t.event_time <= {_timestamp(clock - maturity)} AS matured
        FROM pairs p JOIN {TRANSACTIONS} t ON t.event_id = p.transaction_id {label}
        WHERE p.nth = 1
        """,
    )
    column = {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names}
    return ScoredPairs(
        column["canary"].astype(np.float64), column["production"].astype(np.float64),
        frozenset(int(v) for v in set(column["production_version"].tolist())),
        column["is_fraud"].astype(bool), column["matured"].astype(bool), clock,
    )


def _single(query: QueryBuilder, sql: str) -> datetime:
    value = _table(query, sql).column(0)[0].as_py()
    return value.replace(tzinfo=value.tzinfo or UTC) if value is not None else datetime.fromtimestamp(0, UTC)


def _table(query: QueryBuilder, sql: str) -> pa.Table:
    return pa.RecordBatchReader.from_stream(query.execute(sql)).read_all()


def _timestamp(moment: datetime) -> str:
    """A UTC timestamp literal DataFusion compares with the tables' UTC event times."""
    return f"arrow_cast('{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}', 'Timestamp(Microsecond, Some(\"UTC\"))')"
