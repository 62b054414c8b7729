"""Segmentation quality: confusion matrix, IoU per class, mIoU. One home for training and serving."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates pixel counts ``matrix[true, predicted]`` over many masks."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        if predicted.shape != truth.shape:
            raise ValueError(f"prediction {predicted.shape} and ground truth {truth.shape} differ in shape")
        n = self.num_classes
        pairs = truth.astype(np.int64).ravel() * n + predicted.astype(np.int64).ravel()
        self.matrix += np.bincount(pairs, minlength=n * n)[: n * n].reshape(n, n)

    def iou(self) -> np.ndarray:
        """IoU per class; NaN for a class absent from both prediction and truth."""
        hits = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / union, np.nan)

    def miou(self) -> float:
        return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        return float(np.diag(self.matrix).sum() / max(self.matrix.sum(), 1))
