"""COCO mAP through pycocotools: perfect, missing, misplaced and misclassified detections; PR curves."""

from __future__ import annotations

import numpy as np
import pytest

from training.detection.metrics import ImageResult, evaluate_detections, plot_pr_curves

CLASSES = ("with_mask", "without_mask", "mask_worn_incorrectly")
TRUTH = [
    (np.array([[10, 10, 50, 60], [100, 20, 140, 70]], np.float32), np.array([0, 1])),
    (np.array([[30, 30, 80, 90]], np.float32), np.array([2])),
]


def _results(shift: float = 0.0, classes=None, drop_last: bool = False) -> list[ImageResult]:
    results = []
    for i, (boxes, ids) in enumerate(TRUTH):
        predicted = boxes + shift
        labels = ids if classes is None else np.array(classes[i])
        if drop_last and i == len(TRUTH) - 1:
            predicted, labels = predicted[:0], labels[:0]
        results.append(ImageResult(boxes, ids, predicted, np.full(len(predicted), 0.9, np.float32), labels))
    return results


def test_perfect_detections_score_one() -> None:
    metrics = evaluate_detections(_results(), CLASSES)
    assert metrics.map50 == pytest.approx(1.0) and metrics.map50_95 == pytest.approx(1.0)
    assert metrics.per_class_ap50 == {name: pytest.approx(1.0) for name in CLASSES}
    assert metrics.images == 2 and metrics.objects == 3


def test_a_missed_class_scores_zero_for_that_class() -> None:
    metrics = evaluate_detections(_results(drop_last=True), CLASSES)
    assert metrics.per_class_ap50["mask_worn_incorrectly"] == 0.0
    assert metrics.per_class_ap50["with_mask"] == pytest.approx(1.0)
    assert metrics.map50 == pytest.approx(2 / 3, abs=1e-3)


def test_boxes_off_by_a_few_pixels_pass_iou_05_but_not_the_strict_thresholds() -> None:
    metrics = evaluate_detections(_results(shift=6.0), CLASSES)
    assert metrics.map50 == pytest.approx(1.0)
    assert 0.1 < metrics.map50_95 < 0.9


def test_the_wrong_class_is_a_miss() -> None:
    metrics = evaluate_detections(_results(classes=[[1, 0], [2]]), CLASSES)
    assert (
        metrics.per_class_ap50["with_mask"] == 0.0 and metrics.per_class_ap50["mask_worn_incorrectly"] == 1.0
    )


def test_no_detections_at_all_score_zero_and_a_class_without_truth_is_none() -> None:
    empty = [ImageResult(b, i, b[:0], np.zeros(0, np.float32), i[:0]) for b, i in TRUTH]
    assert evaluate_detections(empty, CLASSES).map50 == 0.0
    only_first = [ImageResult(TRUTH[0][0], TRUTH[0][1], TRUTH[0][0], np.ones(2, np.float32), TRUTH[0][1])]
    metrics = evaluate_detections(only_first, CLASSES)
    assert metrics.per_class_ap50["mask_worn_incorrectly"] is None and metrics.map50 == pytest.approx(1.0)


def test_pr_curves_are_written_as_png(tmp_path) -> None:
    metrics = evaluate_detections(_results(shift=3.0), CLASSES)
    path = tmp_path / "pr.png"
    plot_pr_curves(metrics, CLASSES, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
