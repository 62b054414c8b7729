"""Score a detector on a split as serving sees it, and the task's gate floors.

Each image is resized to the model's input (``ModelContract.to_model_input``), the predictor returns
the padded detection tensors, and the real rows are scaled back to the image's own pixels, where the
ground truth lives. Writes ``evaluation.json``, ``pr_curves.png`` and the worst images (ground truth
white, detections in class colours) when given a folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clients.atomic import write_bytes, write_text
from clients.contract import ModelContract
from training.detection.data import Sample
from training.detection.metrics import DetectionMetrics, ImageResult, evaluate_detections, plot_pr_curves

Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]
MATCH_IOU = 0.5
SHOWN_SCORE = 0.3  # detections drawn and counted for the worst-image ranking


@dataclass(frozen=True)
class Floors:
    """The detection floors of the config's ``gate:`` section (held-out split)."""

    min_map50: float = 0.0
    min_map50_95: float = 0.0
    min_class_ap50: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DetectionEvaluation:
    images: int
    engine: str
    objects: int
    map50: float
    map50_95: float
    per_class_ap50: dict[str, float | None]
    per_class_ap50_95: dict[str, float | None]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        values = {"map50": self.map50, "map50_95": self.map50_95}
        values |= {f"ap50/{name}": ap for name, ap in self.per_class_ap50.items() if ap is not None}
        return {f"{prefix}/{k}" if prefix else k: v for k, v in values.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "engine": self.engine,
            "objects": self.objects,
            "map50": self.map50,
            "map50_95": self.map50_95,
            "per_class_ap50": self.per_class_ap50,
            "per_class_ap50_95": self.per_class_ap50_95,
        }


def detections(
    outputs: dict[str, np.ndarray], index: int, scale: tuple[float, float]
) -> dict[str, np.ndarray]:
    """The real rows of image ``index`` of a padded batch, boxes scaled by (sx, sy)."""
    n = int(np.asarray(outputs["num_detections"][index]).reshape(-1)[0])
    sx, sy = scale
    return {
        "boxes": outputs["boxes"][index, :n].astype(np.float32) * np.array([sx, sy, sx, sy], np.float32),
        "scores": outputs["scores"][index, :n].astype(np.float32),
        "class_ids": outputs["class_ids"][index, :n].astype(np.int64),
    }


def predict_dataset(
    predict: Predictor, dataset: Sequence[Sample], contract: ModelContract, batch_size: int = 4
) -> list[ImageResult]:
    results = []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = predict(np.stack([contract.to_model_input(s.image) for s in samples]))
        for i, sample in enumerate(samples):
            h, w = sample.image.shape[:2]
            found = detections(outputs, i, (w / contract.width, h / contract.height))
            results.append(
                ImageResult(
                    sample.boxes, sample.class_ids, found["boxes"], found["scores"], found["class_ids"]
                )
            )
    return results


def evaluate(
    predict: Predictor,
    dataset: Sequence[Sample],
    contract: ModelContract,
    engine: str,
    out_dir: Path | None = None,
    worst_k: int = 6,
    batch_size: int = 4,
) -> DetectionEvaluation:
    classes = contract.labels.names
    results = predict_dataset(predict, dataset, contract, batch_size)
    scored: DetectionMetrics = evaluate_detections(results, classes)
    evaluation = DetectionEvaluation(
        images=scored.images,
        engine=engine,
        objects=scored.objects,
        map50=scored.map50,
        map50_95=scored.map50_95,
        per_class_ap50=scored.per_class_ap50,
        per_class_ap50_95=scored.per_class_ap50_95,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        import json

        write_text(out_dir / "evaluation.json", json.dumps(evaluation.to_dict(), indent=2))
        plot_pr_curves(scored, classes, out_dir / "pr_curves.png")
        if worst_k:
            _write_worst(dataset, results, contract, out_dir / "worst", worst_k)
    return evaluation


def gate_checks(evaluation: DetectionEvaluation, floors: Floors) -> list[tuple[bool, str]]:
    """(passed, text) per floor; the adapter wraps them in ``training.tasks.Check``."""
    checks = [
        (evaluation.map50 >= floors.min_map50, f"mAP@0.5 {evaluation.map50:.4f} >= {floors.min_map50}"),
        (
            evaluation.map50_95 >= floors.min_map50_95,
            f"mAP@0.5:0.95 {evaluation.map50_95:.4f} >= {floors.min_map50_95}",
        ),
    ]
    for name, floor in floors.min_class_ap50.items():
        ap = evaluation.per_class_ap50.get(name)
        checks.append((ap is not None and ap >= floor, f"AP50 {name} {ap} >= {floor}"))
    return checks


def _f1(result: ImageResult) -> float:
    """Per-image F1 at IoU 0.5 of the confident detections (greedy, by score): ranks worst images."""
    keep = result.scores >= SHOWN_SCORE
    boxes, classes = result.boxes[keep], result.classes[keep]
    matched, used = 0, np.zeros(len(result.gt_boxes), bool)
    for box, cls in zip(boxes, classes, strict=True):
        candidates = np.where(~used & (result.gt_classes == cls))[0]
        if len(candidates):
            ious = _iou(box, result.gt_boxes[candidates])
            best = int(np.argmax(ious))
            if ious[best] >= MATCH_IOU:
                used[candidates[best]] = True
                matched += 1
    total = len(boxes) + len(result.gt_boxes)
    return 1.0 if total == 0 else 2 * matched / total


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(union - inter, 1e-6)


def _write_worst(
    dataset: Sequence[Sample], results: list[ImageResult], contract: ModelContract, out_dir: Path, k: int
) -> None:
    palette = contract.labels.palette()
    order = sorted(range(len(results)), key=lambda i: _f1(results[i]))[:k]
    for rank, index in enumerate(order):
        sample, result = dataset[index], results[index]
        canvas = np.ascontiguousarray(sample.image[..., ::-1])  # BGR for OpenCV
        for box in result.gt_boxes:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), (255, 255, 255), 1)
        for box, score, cls in zip(result.boxes, result.scores, result.classes, strict=True):
            if score < SHOWN_SCORE:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            colour = tuple(int(c) for c in palette[int(cls)][::-1])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(
                canvas, f"{score:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1
            )
        ok, png = cv2.imencode(".png", canvas)
        if ok:
            name = Path(sample.name or f"{index:05d}").stem
            write_bytes(out_dir / f"{rank:02d}_{name}.png", png.tobytes())
