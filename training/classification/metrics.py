"""Classification metrics over predicted probabilities (numpy only) and their plots (matplotlib).

- :func:`classification_report`: accuracy, per-class precision/recall/F1/support, macro F1 and the
  confusion matrix (rows: true class, columns: predicted class), from argmax predictions.
- Binary models also get :func:`roc_curve`, :func:`pr_curve`, ROC AUC, average precision, and a
  decision threshold on the positive class's probability: :func:`choose_threshold` picks it on the
  *validation* split (highest F1 of the positive class), and the test split is then scored at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clients.atomic import atomic_path


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def classification_report(
    probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix of argmax predictions."""
    if len(probabilities) != len(labels) or not len(labels):
        raise ValueError(
            f"need as many predictions as labels (> 0), got {len(probabilities)} and {len(labels)}"
        )
    return report_from_predictions(probabilities.argmax(axis=1), labels, class_names)


def report_from_predictions(
    predicted: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    matrix = confusion_matrix(labels, predicted, len(class_names))
    true_positive = np.diag(matrix).astype(np.float64)
    predicted_count, actual_count = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(
        true_positive, predicted_count, out=np.zeros_like(true_positive), where=predicted_count > 0
    )
    recall = np.divide(true_positive, actual_count, out=np.zeros_like(true_positive), where=actual_count > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    present = actual_count > 0  # macro F1 over the classes the split holds
    return {
        "images": int(len(labels)),
        "accuracy": round(float(true_positive.sum() / len(labels)), 4),
        "macro_f1": round(float(f1[present].mean()), 4),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(actual_count[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (descending), starting at (0, 0)."""
    positives, negatives = _counts(labels)
    thresholds, true_pos, false_pos = _cumulative(scores, labels)
    tpr = np.concatenate([[0.0], true_pos / positives])
    fpr = np.concatenate([[0.0], false_pos / negatives])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids: ties count half)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold (descending)."""
    positives, _ = _counts(labels)
    thresholds, true_pos, false_pos = _cumulative(scores, labels)
    return true_pos / (true_pos + false_pos), true_pos / positives, thresholds


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over thresholds of precision x recall step (the usual step-wise AP)."""
    precision, recall, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold on the positive probability with the highest positive-class F1 (on validation)."""
    precision, recall, thresholds = pr_curve(scores, labels)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return float(thresholds[int(np.argmax(f1))])


def binary_report(
    probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str], threshold: float
) -> dict[str, Any]:
    """AUCs, and accuracy/F1 at ``threshold`` on the positive class (index 1)'s probability."""
    scores = probabilities[:, 1]
    at_threshold = report_from_predictions((scores >= threshold).astype(np.int64), labels, class_names)
    return {
        "roc_auc": round(roc_auc(scores, labels), 4),
        "average_precision": round(average_precision(scores, labels), 4),
        "threshold": round(float(threshold), 4),
        "at_threshold": {
            key: at_threshold[key] for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix")
        },
    }


def _counts(labels: np.ndarray) -> tuple[int, int]:
    positives = int((labels == 1).sum())
    negatives = int(len(labels) - positives)
    if not positives or not negatives:
        raise ValueError(
            f"ROC and PR curves need both classes; got {positives} positive, {negatives} negative"
        )
    return positives, negatives


def _cumulative(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], (labels[order] == 1).astype(np.float64)
    last_of_ties = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_pos = np.cumsum(hits)[last_of_ties]
    false_pos = (last_of_ties + 1) - true_pos
    return sorted_scores[last_of_ties], true_pos, false_pos


# ------------------------------------------------------------------------------------------ plots


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> None:
    plt = _figure()
    matrix = np.asarray(matrix)
    size = 1.2 + 0.9 * len(class_names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=9)
    axes.set_xticks(range(len(class_names)), class_names, rotation=35, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of the true class")
    _save(figure, path)


def plot_roc(scores: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    plt = _figure()
    fpr, tpr, _ = roc_curve(scores, labels)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot(fpr, tpr, label=f"AUC {roc_auc(scores, labels):.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(title)
    axes.legend(loc="lower right")
    _save(figure, path)


def plot_pr(scores: np.ndarray, labels: np.ndarray, threshold: float, path: Path, title: str) -> None:
    plt = _figure()
    precision, recall, thresholds = pr_curve(scores, labels)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot(recall, precision, label=f"AP {average_precision(scores, labels):.3f}")
    chosen = int(np.argmin(np.abs(thresholds - threshold)))
    axes.scatter(
        [recall[chosen]], [precision[chosen]], color="red", zorder=3, label=f"threshold {threshold:.3f}"
    )
    axes.axhline(float((labels == 1).mean()), linestyle="--", color="grey", label="chance")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(loc="lower left")
    _save(figure, path)


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
