"""Typed, self-validating results: one dataclass per task, with adapters from Triton's outputs.

In the style of ``supervision``: ``Segmentation``, ``Detections`` and ``Classification`` check their
own invariants when built, come from Triton through ``from_outputs`` (the per-task tensors of
``clients.contract``), move between model pixels and image pixels with ``to_image_size``, and turn into
the JSON the gateway answers with ``to_json``. ``FrameResult`` wraps one of them with the frame's index
and where the time went.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from clients.contract import ModelContract, Task
from clients.labels import LabelMap


@dataclass(frozen=True)
class Segmentation:
    """A class-id mask, uint8 [H, W]."""

    mask: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != np.uint8 or self.mask.ndim != 2:
            shape = getattr(self.mask, "shape", None)
            raise ValueError(
                f"mask must be a uint8 [H, W] array, got {getattr(self.mask, 'dtype', None)} {shape}"
            )

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> list[Segmentation]:
        return [cls(mask) for mask in outputs["masks"]]

    def to_image_size(self, height: int, width: int) -> Segmentation:
        """Scale to an image's size (nearest neighbour: class ids never blend)."""
        if self.mask.shape == (height, width):
            return self
        return Segmentation(cv2.resize(self.mask, (width, height), interpolation=cv2.INTER_NEAREST))

    def class_shares(self, num_classes: int) -> np.ndarray:
        """Share of pixels per class id."""
        return np.bincount(self.mask.ravel(), minlength=num_classes)[:num_classes] / self.mask.size

    def summary(self, labels: LabelMap) -> dict[str, Any]:
        shares = self.class_shares(len(labels))
        return {
            "class_shares": {name: round(float(s), 5) for name, s in zip(labels.names, shares, strict=True)}
        }

    def to_json(self, labels: LabelMap) -> dict[str, Any]:
        """Per present class, a COCO uncompressed RLE (column-major, as pycocotools' ``frPyObjects``)."""
        height, width = self.mask.shape
        masks = []
        for class_id in np.unique(self.mask):
            binary = (self.mask == class_id).ravel(order="F")
            masks.append(
                {
                    "class_id": int(class_id),
                    "label": labels.labels[int(class_id)].name if class_id < len(labels) else str(class_id),
                    "pixels": int(binary.sum()),
                    "rle": {"size": [height, width], "counts": rle_counts(binary)},
                }
            )
        return {"task": Task.SEGMENTATION.value, "height": height, "width": width, "masks": masks}


def rle_counts(flat: np.ndarray) -> list[int]:
    """Run lengths of a flat boolean array, starting with a run of zeros (COCO convention)."""
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat.size and flat[0] else counts


def rle_decode(counts: list[int], height: int, width: int) -> np.ndarray:
    """Inverse of ``rle_counts`` for a [height, width] column-major mask."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((height, width), order="F")


@dataclass(frozen=True)
class Detections:
    """Boxes ``xyxy`` float32 [N, 4] (x1, y1, x2, y2 pixels), ``confidence`` [N], ``class_id`` int [N]."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must be [N, 4], got {self.xyxy.shape}")
        if self.confidence.shape != (n,) or self.class_id.shape != (n,):
            raise ValueError(
                f"confidence {self.confidence.shape} and class_id {self.class_id.shape} must be [{n}]"
            )
        if n and (np.any(self.xyxy[:, 2] < self.xyxy[:, 0]) or np.any(self.xyxy[:, 3] < self.xyxy[:, 1])):
            raise ValueError("boxes need x2 >= x1 and y2 >= y1")
        if n and (np.any(self.confidence < 0) or np.any(self.confidence > 1)):
            raise ValueError("confidence must be in [0, 1]")
        if n and np.any(self.class_id < 0):
            raise ValueError("class ids must be >= 0")

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> list[Detections]:
        """Triton's padded detection tensors -> one ``Detections`` per image (padding dropped)."""
        found = []
        for boxes, scores, class_ids, count in zip(
            outputs["boxes"], outputs["scores"], outputs["class_ids"], outputs["num_detections"], strict=True
        ):
            n = int(np.asarray(count).reshape(-1)[0])
            found.append(
                cls(
                    boxes[:n].astype(np.float32),
                    np.clip(scores[:n].astype(np.float32), 0.0, 1.0),
                    class_ids[:n].astype(np.int32),
                )
            )
        return found

    def __len__(self) -> int:
        return len(self.xyxy)

    def with_min_confidence(self, threshold: float) -> Detections:
        keep = self.confidence >= threshold
        return Detections(self.xyxy[keep], self.confidence[keep], self.class_id[keep])

    def scaled(self, from_size: tuple[int, int], to_size: tuple[int, int]) -> Detections:
        """Boxes from an image of (height, width) ``from_size`` to one of ``to_size``, clipped to it."""
        (fh, fw), (th, tw) = from_size, to_size
        xyxy = self.xyxy * np.array([tw / fw, th / fh, tw / fw, th / fh], np.float32)
        xyxy = np.clip(xyxy, 0, [tw, th, tw, th]).astype(np.float32)
        return Detections(xyxy, self.confidence, self.class_id)

    def summary(self, labels: LabelMap) -> dict[str, Any]:
        counts = np.bincount(self.class_id, minlength=len(labels))[: len(labels)]
        return {"count": len(self), "per_class": dict(zip(labels.names, map(int, counts), strict=True))}

    def to_json(self, labels: LabelMap) -> dict[str, Any]:
        # Rounded and converted as whole arrays: per-value float()/round() dominated a batch job's
        # time on images with many boxes.
        boxes = np.round(self.xyxy.astype(np.float64), 2).tolist()
        scores = np.round(self.confidence.astype(np.float64), 5).tolist()
        class_ids = self.class_id.tolist()
        return {
            "task": Task.DETECTION.value,
            "detections": [
                {
                    "box": box,
                    "label": labels.labels[c].name if c < len(labels) else str(c),
                    "class_id": c,
                    "score": score,
                }
                for box, score, c in zip(boxes, scores, class_ids, strict=True)
            ],
        }


@dataclass(frozen=True)
class Classification:
    """Class probabilities, float32 [C], summing to 1."""

    probabilities: np.ndarray

    def __post_init__(self) -> None:
        p = self.probabilities
        if not isinstance(p, np.ndarray) or p.ndim != 1 or p.size < 2:
            raise ValueError(
                f"probabilities must be a [C] array with C >= 2, got {getattr(p, 'shape', None)}"
            )
        if np.any(p < -1e-6) or np.any(p > 1 + 1e-6) or abs(float(p.sum()) - 1.0) > 1e-3:
            raise ValueError("probabilities must be in [0, 1] and sum to 1")

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> list[Classification]:
        return [cls(p.astype(np.float32)) for p in outputs["probabilities"]]

    @property
    def class_id(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.class_id])

    def top(self, k: int) -> list[tuple[int, float]]:
        order = np.argsort(-self.probabilities)[:k]
        return [(int(i), float(self.probabilities[i])) for i in order]

    def summary(self, labels: LabelMap) -> dict[str, Any]:
        return {
            "label": labels.labels[self.class_id].name,
            "class_id": self.class_id,
            "confidence": self.confidence,
        }

    def to_json(self, labels: LabelMap) -> dict[str, Any]:
        return {
            "task": Task.CLASSIFICATION.value,
            "label": labels.labels[self.class_id].name,
            "class_id": self.class_id,
            "confidence": round(self.confidence, 5),
            "probabilities": {
                name: round(float(p), 5) for name, p in zip(labels.names, self.probabilities, strict=True)
            },
        }


Prediction = Segmentation | Detections | Classification

RESULT_TYPES: dict[Task, type] = {
    Task.SEGMENTATION: Segmentation,
    Task.DETECTION: Detections,
    Task.CLASSIFICATION: Classification,
}


def predictions_from_outputs(outputs: dict[str, np.ndarray], contract: ModelContract) -> list[Prediction]:
    """Triton's outputs for a batch -> one typed prediction per image, in model pixels."""
    return RESULT_TYPES[contract.task].from_outputs(outputs)


def to_image_size(prediction: Prediction, contract: ModelContract, height: int, width: int) -> Prediction:
    """A prediction in model pixels -> in the pixels of an image of ``height`` x ``width``."""
    if isinstance(prediction, Segmentation):
        return prediction.to_image_size(height, width)
    if isinstance(prediction, Detections):
        return prediction.scaled(contract.input_size, (height, width))
    return prediction


RESULT_SOURCES = ("inferred", "propagated")


@dataclass(frozen=True)
class FrameResult:
    """One frame's prediction, with where the time went (seconds, by stage name).

    ``source`` says how it was made: ``"inferred"`` by the model, or ``"propagated"`` from a
    keyframe's result by the frame's estimated motion (``clients.temporal``), with no engine call.
    """

    frame_index: int
    prediction: Prediction
    timings: dict[str, float] = field(default_factory=dict)
    model_version: str = ""  # the version Triton ran (for a propagated result: on its keyframe)
    source: str = "inferred"

    def __post_init__(self) -> None:
        if self.frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {self.frame_index}")
        if self.source not in RESULT_SOURCES:
            raise ValueError(f"source must be one of {RESULT_SOURCES}, got {self.source!r}")
        if not isinstance(self.prediction, Segmentation | Detections | Classification):
            raise ValueError(f"prediction must be a typed result, got {type(self.prediction).__name__}")
        negative = {stage: seconds for stage, seconds in self.timings.items() if seconds < 0}
        if negative:
            raise ValueError(f"timings must be >= 0 seconds, got {negative}")

    @property
    def mask(self) -> np.ndarray:
        """The class-id mask of a segmentation result."""
        if not isinstance(self.prediction, Segmentation):
            raise AttributeError(f"a {type(self.prediction).__name__} result has no mask")
        return self.prediction.mask
