"""Bootstrap intervals of the ranking metrics: the same values as scikit-learn's, intervals that hold the truth about
as often as they claim, and paired differences that see a better scorer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from edgelake.training.evaluation import binary_metrics, bootstrap_intervals, decline_threshold, paired_differences


def scored(seed: int, n: int = 20_000, separation: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels with 1% frauds and scores that separate them by ``separation`` standard deviations, rounded so some tie."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.01).astype(np.float64)
    return labels, np.round(rng.normal(labels * separation, 1.0), 2)


def test_the_point_values_are_scikit_learns() -> None:
    labels, scores = scored(1)
    estimates = bootstrap_intervals(labels, scores, rounds=50)
    reference = binary_metrics(labels, scores, 0.5)
    for name in ("auprc", "roc_auc", "recall_at_1pct_fpr"):
        assert estimates[name].value == pytest.approx(reference[name], abs=1e-12), name
        assert estimates[name].low <= estimates[name].value <= estimates[name].high, name


def test_resampled_weights_give_scikit_learns_weighted_metrics() -> None:
    from edgelake.training.evaluation import _Ranking

    labels, scores = scored(2)
    weights = np.random.default_rng(3).integers(0, 3, len(labels)).astype(np.float64)
    auprc, roc_auc, _ = _Ranking(labels, scores).metrics(weights)
    assert auprc == pytest.approx(average_precision_score(labels, scores, sample_weight=weights), abs=1e-12)
    assert roc_auc == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)


def test_the_roc_auc_interval_covers_the_population_value_about_as_often_as_claimed() -> None:
    truth = roc_auc_score(*scored(0, n=2_000_000))  # the scorer's ROC-AUC on the whole population
    covered = 0
    for seed in range(1, 41):
        estimate = bootstrap_intervals(*scored(seed), rounds=200, seed=seed)["roc_auc"]
        covered += estimate.low <= truth <= estimate.high
    assert 33 <= covered <= 40, f"a 95% interval covered the truth in {covered} of 40 samples"


def test_a_paired_difference_sees_a_better_scorer_and_not_a_copy() -> None:
    labels, weaker = scored(4, separation=1.0)
    rng = np.random.default_rng(5)
    stronger = weaker + labels * 1.0 + rng.normal(0, 0.1, len(labels))
    better = paired_differences(labels, stronger, weaker, rounds=300)
    assert better["auprc"].low > 0 and better["roc_auc"].low > 0, better
    same = paired_differences(labels, weaker, weaker, rounds=50)
    assert all(e.value == e.low == e.high == 0 for e in same.values()), same


def test_one_class_is_refused() -> None:
    with pytest.raises(ValueError, match="both frauds and legitimate"):
        bootstrap_intervals(np.zeros(10), np.linspace(0, 1, 10))


def test_the_decline_threshold_is_the_lowest_reaching_the_precision_and_not_below_review() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=np.float64)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert decline_threshold(labels, scores, review=0.0, precision=0.75) == 0.4  # 4 frauds among the 5 from 0.4
    assert decline_threshold(labels, scores, review=0.0, precision=0.9) == 0.6
    assert decline_threshold(labels, scores, review=0.7, precision=0.75) == 0.7
    assert decline_threshold(np.array([0.0, 1.0]), np.array([0.9, 0.1]), review=0.0) == 1.0  # never precise enough
