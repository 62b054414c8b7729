"""Do two engines find the same objects? And how fast is a bare engine?

Parity compares detections, not raw tensors: OpenVINO runs bf16 on this CPU, so scores move in the
third decimal and a borderline peak may swap places in the top-K; what matters is that both engines
report the same confident detections: same class, nearly the same box.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

CONFIDENT = 0.3  # reference detections that must be reproduced
SAME_BOX_IOU = 0.9


def agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> tuple[int, int]:
    """(agreeing, units) over a padded batch. Units are the confident detections (score >= 0.3) of
    either engine; one agrees when the other engine reports it too (any score), same class, IoU >= 0.9.
    An image where neither finds anything confident counts as one agreeing unit."""
    agreeing = units = 0
    for i in range(len(reference["boxes"])):
        ref, can = _rows(reference, i), _rows(candidate, i)
        found = _found(ref, can) + _found(can, ref)
        if not found:
            found = [True]  # both empty: they agree on this image
        agreeing += sum(found)
        units += len(found)
    return agreeing, units


def _rows(outputs: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = int(np.asarray(outputs["num_detections"][i]).reshape(-1)[0])
    return outputs["boxes"][i, :n], outputs["scores"][i, :n], outputs["class_ids"][i, :n]


def _found(source, other) -> list[bool]:
    """For each confident detection of ``source``: does ``other`` report it?"""
    boxes, classes = other[0], other[2]
    result = []
    for box, score, cls in zip(*source, strict=True):
        if score >= CONFIDENT:
            same = classes == cls
            result.append(bool(same.any() and _iou(box, boxes[same]).max() >= SAME_BOX_IOU))
    return result


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(union - inter, 1e-6)


def latency_ms(
    engine: Callable[[np.ndarray], dict], image: np.ndarray, repeats: int = 30
) -> dict[str, float]:
    """Batch-1 latency of a bare engine in ms after warm-up: wall-clock min and median of ``repeats``
    calls, and the process CPU time per call (on a busy machine the wall clock mostly measures the
    wait for a core; CPU time of a one-thread engine approximates its latency on an idle core)."""
    batch = image[None]
    for _ in range(3):
        engine(batch)
    times, cpu_start = [], time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        engine(batch)
        times.append((time.perf_counter() - start) * 1000)
    cpu = (time.process_time() - cpu_start) * 1000 / repeats
    return {
        "min": round(min(times), 2),
        "median": round(float(np.median(times)), 2),
        "cpu_per_call": round(cpu, 2),
    }
