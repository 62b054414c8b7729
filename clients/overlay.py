"""Drawing masks: colourised class ids and the translucent overlay shown to users."""

from __future__ import annotations

import numpy as np

from clients.labels import LabelMap


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
