"""Annotators per task: mask overlays (segmentation), boxes with labels (detection), a label banner
(classification), and ``Annotator`` choosing the one for a model's task."""

from __future__ import annotations

import cv2
import numpy as np

from clients.contract import ModelContract
from clients.labels import LabelMap
from clients.results import Classification, Detections, Prediction, Segmentation


def colorize(mask: np.ndarray, labels: LabelMap) -> np.ndarray:
    """Class ids [H, W] -> RGB [H, W, 3] in the label map's colours."""
    return labels.palette()[mask]


class OverlayPainter:
    """Blend each class's colour into frames; background (class 0) is left untouched.

    Precomputes per-class colour * alpha so a frame costs one lookup and one fused multiply-add.
    """

    def __init__(self, labels: LabelMap, alpha: float = 0.45) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        palette = labels.palette().astype(np.float32)
        self._keep = np.full((len(labels), 1), 1.0 - alpha, np.float32)
        self._add = palette * alpha
        self._keep[0], self._add[0] = 1.0, 0.0

    def __call__(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if frame.shape[:2] != mask.shape:
            raise ValueError(f"frame {frame.shape[:2]} and mask {mask.shape} differ in size")
        blended = frame * self._keep[mask] + self._add[mask]
        return blended.astype(np.uint8)


class BoxPainter:
    """Draw detections: a box per detection in its class colour, with ``label score`` above it."""

    def __init__(self, labels: LabelMap, thickness: int = 2) -> None:
        self._labels = labels
        self._thickness = thickness

    def __call__(self, frame: np.ndarray, detections: Detections) -> np.ndarray:
        canvas = frame.copy()
        for box, score, class_id in zip(
            detections.xyxy, detections.confidence, detections.class_id, strict=True
        ):
            color = tuple(int(c) for c in self._labels.labels[int(class_id)].color)
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, self._thickness)
            _text(
                canvas, f"{self._labels.labels[int(class_id)].name} {score:.2f}", (x1, max(y1 - 4, 12)), color
            )
        return canvas


class LabelBanner:
    """Draw a classification: a banner across the top with the label and its confidence."""

    def __init__(self, labels: LabelMap) -> None:
        self._labels = labels

    def __call__(self, frame: np.ndarray, classification: Classification) -> np.ndarray:
        canvas = frame.copy()
        label = self._labels.labels[classification.class_id]
        height = max(18, frame.shape[0] // 14)
        canvas[:height] = (canvas[:height] * 0.35).astype(np.uint8)
        cv2.rectangle(canvas, (0, 0), (height // 2, height), tuple(int(c) for c in label.color), -1)
        _text(
            canvas,
            f"{label.name} {classification.confidence:.2f}",
            (height // 2 + 6, int(height * 0.72)),
            (255, 255, 255),
            scale=height / 32,
        )
        return canvas


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], color, scale: float = 0.45) -> None:
    # A dark outline keeps the text readable on any background.
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


class Annotator:
    """The annotator of a task: ``Annotator(contract)(frame, prediction)`` -> an RGB frame to show."""

    def __init__(self, contract: ModelContract, alpha: float = 0.45) -> None:
        self._mask = OverlayPainter(contract.labels, alpha)
        self._boxes = BoxPainter(contract.labels)
        self._banner = LabelBanner(contract.labels)

    def __call__(self, frame: np.ndarray, prediction: Prediction) -> np.ndarray:
        if isinstance(prediction, Segmentation):
            return self._mask(frame, prediction.mask)
        if isinstance(prediction, Detections):
            return self._boxes(frame, prediction)
        return self._banner(frame, prediction)
