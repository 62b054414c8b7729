"""Classification metrics against hand-worked cases and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from training.classification.metrics import (
    average_precision,
    binary_report,
    choose_threshold,
    classification_report,
    plot_confusion,
    plot_pr,
    plot_roc,
    roc_auc,
)


def test_report_counts_a_hand_worked_example() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    report = classification_report(np.eye(3)[predicted], labels, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["per_class"]["b"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert report["per_class"]["a"]["f1"] == 0.5
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-4)


def test_roc_auc_matches_pairwise_counting() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 2)  # rounded: ties occur
    positives, negatives = scores[labels == 1], scores[labels == 0]
    pairs = (positives[:, None] > negatives[None]).mean() + 0.5 * (
        positives[:, None] == negatives[None]
    ).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairs, abs=1e-9)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0


def test_average_precision_and_threshold() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    # Positives found at ranks 1, 3, 4: AP = (1/1 + 2/3 + 3/4) / 3.
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert choose_threshold(scores, labels) == 0.6  # all three positives, one false positive: best F1
    report = binary_report(np.stack([1 - scores, scores], 1), labels, ["low", "high"], threshold=0.6)
    assert report["at_threshold"]["accuracy"] == pytest.approx(5 / 6, abs=1e-4)


def test_one_class_only_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="need both classes"):
        roc_auc(np.array([0.2, 0.4]), np.array([1, 1]))


def test_plots_are_written_as_png(tmp_path) -> None:
    scores, labels = np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 0, 1, 0])
    plot_confusion([[3, 1], [0, 4]], ["low", "high"], tmp_path / "c.png", "confusion")
    plot_roc(scores, labels, tmp_path / "roc.png", "roc")
    plot_pr(scores, labels, 0.6, tmp_path / "pr.png", "pr")
    for name in ("c.png", "roc.png", "pr.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
