"""The typed result of segmenting one frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FrameResult:
    """One frame's class mask, with where the time went (seconds, by stage name)."""

    frame_index: int
    mask: np.ndarray  # uint8 [H, W] class ids
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {self.frame_index}")
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != np.uint8 or self.mask.ndim != 2:
            shape = getattr(self.mask, "shape", None)
            raise ValueError(
                f"mask must be a uint8 [H, W] array, got {getattr(self.mask, 'dtype', None)} {shape}"
            )
        negative = {stage: seconds for stage, seconds in self.timings.items() if seconds < 0}
        if negative:
            raise ValueError(f"timings must be >= 0 seconds, got {negative}")

    def class_fractions(self, num_classes: int) -> np.ndarray:
        """Share of pixels per class id, for quick summaries."""
        return np.bincount(self.mask.ravel(), minlength=num_classes)[:num_classes] / self.mask.size
