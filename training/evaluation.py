"""How well a binary scorer separates frauds from the rest: metrics, their bootstrap intervals and the plots that show them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUPRC, ROC-AUC, recall at 1% false-positive rate, and precision/recall at ``threshold``."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    flagged = scores >= threshold
    positives = labels == 1
    true_positives = int(np.sum(flagged & positives))
    return {
        "auprc": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "recall_at_1pct_fpr": float(tpr[np.searchsorted(fpr, 0.01, side="right") - 1]),
        "threshold": float(threshold),
        "precision_at_threshold": true_positives / max(int(flagged.sum()), 1),
        "recall_at_threshold": true_positives / max(int(positives.sum()), 1),
        "positives": int(positives.sum()),
        "examples": int(len(labels)),
    }


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the best F1 on these examples."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


DECLINE_PRECISION = 0.9


def decline_threshold(labels: np.ndarray, scores: np.ndarray, review: float, precision: float = DECLINE_PRECISION) -> float:
    """The lowest score threshold, not below ``review``, from which at least ``precision`` of these examples are frauds;
    1.0 (only a certain fraud) where none reaches it."""
    from sklearn.metrics import precision_recall_curve

    precisions, _, thresholds = precision_recall_curve(labels, scores)
    eligible = (precisions[:-1] >= precision) & (thresholds >= review)
    return float(thresholds[int(np.argmax(eligible))]) if eligible.any() else 1.0


RANKING_METRICS = ("auprc", "roc_auc", "recall_at_1pct_fpr")
BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the examples and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        """As a difference: ``+0.012 [-0.003, +0.027]``."""
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


class _Ranking:
    """One scorer's ranking of fixed examples, so that resampled metrics cost one cumulative sum each."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self._order = np.argsort(-scores, kind="stable")
        ranked = scores[self._order]
        # The last example of each run of equal scores: ties share one threshold, as in scikit-learn's curves.
        self._thresholds = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
        self._positive = (labels[self._order] == 1).astype(np.float64)

    def metrics(self, weights: np.ndarray) -> tuple[float, float, float]:
        """AUPRC (average precision), ROC-AUC and recall at 1% false-positive rate with example i counted ``weights[i]`` times."""
        weight = weights[self._order]
        true_positives = np.cumsum(weight * self._positive)[self._thresholds]
        false_positives = np.cumsum(weight * (1 - self._positive))[self._thresholds]
        tpr = np.r_[0.0, true_positives / true_positives[-1]]
        fpr = np.r_[0.0, false_positives / false_positives[-1]]
        flagged = true_positives + false_positives
        precision = np.divide(true_positives, flagged, out=np.ones_like(flagged), where=flagged > 0)
        auprc = float(np.sum(np.diff(tpr) * precision))
        roc_auc = float(np.trapezoid(tpr, fpr))
        recall = float(tpr[np.searchsorted(fpr, 0.01, side="right") - 1])
        return auprc, roc_auc, recall


def _resampled_weights(labels: np.ndarray, rounds: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples as counts per example, frauds and legitimate ones drawn apart so every resample has both."""
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(labels == value) for value in (0, 1)]
    for _ in range(rounds):
        weights = np.zeros(len(labels))
        for members in classes:
            weights[members] = np.bincount(rng.integers(0, len(members), len(members)), minlength=len(members))
        yield weights


def _estimates(value: np.ndarray, resampled: np.ndarray, confidence: float) -> dict[str, Estimate]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail], axis=0)
    return {name: Estimate(float(value[i]), float(low[i]), float(high[i])) for i, name in enumerate(RANKING_METRICS)}


def bootstrap_intervals(
    labels: np.ndarray, scores: np.ndarray, *, rounds: int = BOOTSTRAP_ROUNDS, confidence: float = 0.95, seed: int = 0
) -> dict[str, Estimate]:
    """AUPRC, ROC-AUC and recall at 1% FPR of ``scores``, each with its percentile bootstrap interval (``rounds``
    stratified resamples). Raise ValueError unless ``labels`` holds both classes."""
    _both_classes(labels)
    ranking = _Ranking(labels, scores)
    value = np.array(ranking.metrics(np.ones(len(labels))))
    resampled = np.array([ranking.metrics(weights) for weights in _resampled_weights(labels, rounds, seed)])
    return _estimates(value, resampled, confidence)


def paired_differences(
    labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray, *,
    rounds: int = BOOTSTRAP_ROUNDS, confidence: float = 0.95, seed: int = 0,
) -> dict[str, Estimate]:
    """Candidate's metrics minus baseline's on the same examples, each with the percentile interval of the difference
    over paired bootstrap resamples (both scorers judged on each resample). Raise ValueError unless ``labels`` holds both classes."""
    _both_classes(labels)
    rankings = _Ranking(labels, candidate), _Ranking(labels, baseline)
    ones = np.ones(len(labels))
    value = np.subtract(rankings[0].metrics(ones), rankings[1].metrics(ones))
    resampled = np.array(
        [np.subtract(rankings[0].metrics(weights), rankings[1].metrics(weights)) for weights in _resampled_weights(labels, rounds, seed)]
    )
    return _estimates(value, resampled, confidence)


def _both_classes(labels: np.ndarray) -> None:
    if not (np.any(labels == 1) and np.any(labels == 0)):
        raise ValueError("bootstrap intervals need both frauds and legitimate examples")


def write_plots(labels: np.ndarray, scores: np.ndarray, out_dir: Path, title: str) -> dict[str, Path]:
    """The PR curve, the ROC curve and the score histogram by class, as PNGs in ``out_dir``."""
    import matplotlib
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {name: out_dir / f"{name}.png" for name in ("pr_curve", "roc_curve", "score_histogram")}
    precision, recall, _ = precision_recall_curve(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    figures = {
        "pr_curve": (recall, precision, "recall", "precision", f"AUPRC {average_precision_score(labels, scores):.3f}"),
        "roc_curve": (fpr, tpr, "false-positive rate", "true-positive rate", f"ROC-AUC {roc_auc_score(labels, scores):.3f}"),
    }
    for name, (x, y, x_label, y_label, legend) in figures.items():
        figure, axes = plt.subplots(figsize=(5, 4))
        axes.plot(x, y, label=legend)
        axes.set(xlabel=x_label, ylabel=y_label, title=f"{title}: {name.replace('_', ' ')}")
        axes.legend(loc="lower right" if name == "roc_curve" else "lower left")
        figure.tight_layout()
        figure.savefig(paths[name], dpi=100)
        plt.close(figure)
    figure, axes = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 51).tolist()  # a list: what matplotlib's types declare for bin edges
    for value, name in ((0, "legitimate"), (1, "fraud")):
        axes.hist(scores[labels == value], bins=bins, alpha=0.6, density=True, label=name)
    axes.set(xlabel="score", ylabel="density (log)", yscale="log", title=f"{title}: scores by class")
    axes.legend()
    figure.tight_layout()
    figure.savefig(paths["score_histogram"], dpi=100)
    plt.close(figure)
    return paths
