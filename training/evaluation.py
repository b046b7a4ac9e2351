"""How well a binary scorer separates frauds from the rest: metrics and the plots that show them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUPRC, ROC-AUC, recall at 1% false-positive rate, and precision/recall at ``threshold``."""
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
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def write_plots(labels: np.ndarray, scores: np.ndarray, out_dir: Path, title: str) -> dict[str, Path]:
    """The PR curve, the ROC curve and the score histogram by class, as PNGs in ``out_dir``."""
    import matplotlib

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
