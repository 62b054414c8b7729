"""COCO-style detection metrics with pycocotools: mAP@0.5, mAP@0.5:0.95, per-class AP, PR curves.

pycocotools is the reference implementation (101-point interpolated precision, max 100 detections per
image), so the figures compare with published ones.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageResult:
    """Ground truth and predictions of one image (x1, y1, x2, y2 pixels)."""

    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True)
class DetectionMetrics:
    map50: float
    map50_95: float
    per_class_ap50: dict[str, float | None]  # None: the class has no ground truth in the split
    per_class_ap50_95: dict[str, float | None]
    images: int
    objects: int
    precision: np.ndarray  # pycocotools' [T, R, K] at area "all", maxDets 100 (-1: undefined)

    def to_dict(self) -> dict:
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "per_class_ap50": self.per_class_ap50,
            "per_class_ap50_95": self.per_class_ap50_95,
            "images": self.images,
            "objects": self.objects,
        }


def evaluate_detections(results: Sequence[ImageResult], classes: Sequence[str]) -> DetectionMetrics:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = [], [], []
    for image_id, result in enumerate(results, start=1):
        images.append({"id": image_id})
        for box, cls in zip(result.gt_boxes, result.gt_classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for box, score, cls in zip(result.boxes, result.scores, result.classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
        truth.createIndex()
        if not detections:
            return _empty(results, classes, len(annotations))
        predicted = truth.loadRes(detections)
        evaluator = COCOeval(truth, predicted, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K] area all, maxDets 100
    per50, per = {}, {}
    for k, name in enumerate(classes):
        p50, pall = precision[0, :, k], precision[:, :, k]
        per50[name] = _round(p50[p50 > -1].mean()) if (p50 > -1).any() else None
        per[name] = _round(pall[pall > -1].mean()) if (pall > -1).any() else None
    return DetectionMetrics(
        map50=_round(max(evaluator.stats[1], 0.0)),
        map50_95=_round(max(evaluator.stats[0], 0.0)),
        per_class_ap50=per50,
        per_class_ap50_95=per,
        images=len(results),
        objects=len(annotations),
        precision=precision,
    )


def _empty(results: Sequence[ImageResult], classes: Sequence[str], objects: int) -> DetectionMetrics:
    none = {name: 0.0 for name in classes}
    return DetectionMetrics(
        0.0, 0.0, none, dict(none), len(results), objects, np.full((10, 101, len(classes)), -1.0)
    )


def _round(value: float) -> float:
    return round(float(value), 4)


def plot_pr_curves(metrics: DetectionMetrics, classes: Sequence[str], path: Path) -> None:
    """Precision-recall curves per class at IoU 0.5 (and 0.75 dashed) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clients.atomic import atomic_path

    recall = np.linspace(0, 1, 101)
    figure, axis = plt.subplots(figsize=(6, 4.5), dpi=110)
    for k, name in enumerate(classes):
        for t, style in ((0, "-"), (5, "--")):
            curve = metrics.precision[t, :, k]
            if (curve > -1).any():
                label = f"{name} AP50 {metrics.per_class_ap50[name]:.3f}" if t == 0 else None
                axis.plot(recall, np.where(curve > -1, curve, np.nan), style, color=f"C{k}", label=label)
    axis.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"PR curves (solid IoU 0.5, dashed 0.75): mAP@0.5 {metrics.map50:.3f}",
    )
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:  # a class without ground truth has no curve
        axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)
