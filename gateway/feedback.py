"""Feedback for every model: what users say a prediction should have been, kept as training data.

Each entry is validated against the model's contract (mask size and class ids, box bounds and class
names, labels) and written in the public layout the training loaders read, so the feedback folder is
a dataset as it stands (and DVC tracks it as one):

- segmentation: ``images/<id>.png`` + ``masks/<id>.png`` (class ids);
- detection: ``images/<id>.png`` + ``labels/<id>.txt`` (YOLO: class cx cy w h, normalised) + ``data.yaml``;
- classification: ``<label>/<id>.png`` (ImageFolder);
- a verdict without a correction (``correct`` / ``wrong``): ``unlabelled/<id>.png``.

``index.jsonl`` records every entry: id, model version that predicted, the prediction, the verdict,
time and API key name (and, for an item of the active-learning queue, its id, reason and score).
Files appear atomically; the index line is appended last, so an entry is counted only once all its
files exist.

Predictions the gateway answered are kept for a while (``PredictionCache``), so feedback may name a
``prediction_id`` instead of sending the image again.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.atomic import write_bytes, write_text
from clients.contract import ModelContract, Task
from clients.masks import decode_mask_png, encode_mask_png
from gateway.errors import ApiError

VERDICTS = ("correct", "wrong")


@dataclass(frozen=True)
class KeptPrediction:
    id: str
    model: str
    version: str
    image_bytes: bytes  # as uploaded (PNG, JPEG...)
    height: int
    width: int
    prediction: dict[str, Any]  # the JSON the gateway answered
    created_at: float


class PredictionCache:
    """The last ``capacity`` predictions per model, with their images, for feedback by id."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._entries: dict[str, OrderedDict[str, KeptPrediction]] = {}
        self._lock = threading.Lock()

    def keep(
        self, model: str, version: str, image_bytes: bytes, shape: tuple[int, ...], prediction: dict
    ) -> str:
        kept = KeptPrediction(
            uuid.uuid4().hex, model, version, image_bytes, shape[0], shape[1], prediction, time.time()
        )
        with self._lock:
            entries = self._entries.setdefault(model, OrderedDict())
            entries[kept.id] = kept
            while len(entries) > self.capacity:
                entries.popitem(last=False)
        return kept.id

    def get(self, model: str, prediction_id: str) -> KeptPrediction:
        with self._lock:
            kept = self._entries.get(model, {}).get(prediction_id)
        if kept is None:
            raise ApiError(404, "prediction_not_found", f"no kept prediction {prediction_id!r} for {model}")
        return kept


class FeedbackStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def folder(self, model: str) -> Path:
        return self.root / model

    def add(
        self,
        contract: ModelContract,
        image_png: bytes,
        height: int,
        width: int,
        target: dict[str, Any] | None,
        mask_png: bytes | None,
        verdict: str | None,
        version: str,
        prediction: dict[str, Any] | None,
        key_name: str | None,
        to_label: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate and store one entry; returns its index record. ``ApiError`` 422 names the field.
        ``to_label``: the active-learning item this entry labels (id, reason, score), recorded with it."""
        if verdict is not None and verdict not in VERDICTS:
            raise ApiError(422, "invalid_feedback", f"verdict must be one of {VERDICTS}, got {verdict!r}")
        has_correction = target is not None or mask_png is not None
        if not has_correction and verdict is None:
            raise ApiError(422, "invalid_feedback", "send a correction (mask, boxes or label) or a verdict")
        entry_id = uuid.uuid4().hex
        folder = self.folder(contract.model_name)
        writes: list[tuple[Path, bytes]] = []
        kind = "verdict"
        if has_correction:
            kind = "correction"
            writes += self._correction_files(
                contract, folder, entry_id, image_png, height, width, target, mask_png
            )
        else:
            writes.append((folder / "unlabelled" / f"{entry_id}.png", image_png))
        record = {
            "id": entry_id,
            "model": contract.model_name,
            "version": version,
            "kind": kind,
            "verdict": verdict or ("wrong" if has_correction else None),
            "target": target,
            "prediction": prediction,
            "key": key_name,
            "created_at": time.time(),
            "files": [str(path.relative_to(folder)) for path, _ in writes],
        }
        if to_label is not None:
            record["to_label"] = to_label
        with self._lock:
            for path, data in writes:
                write_bytes(path, data)
            if contract.task == Task.DETECTION:
                write_text(folder / "data.yaml", _yolo_yaml(contract))
            with open(folder / "index.jsonl", "a") as index:  # last: an entry counts once its files exist
                index.write(json.dumps(record) + "\n")
        return record

    def _correction_files(
        self, contract, folder, entry_id, image_png, height, width, target, mask_png
    ) -> list[tuple[Path, bytes]]:
        image = (folder / "images" / f"{entry_id}.png", image_png)
        if contract.task == Task.SEGMENTATION:
            if mask_png is None:
                raise ApiError(
                    422, "invalid_feedback", "mask: a segmentation correction is a PNG of class ids"
                )
            try:
                mask = decode_mask_png(mask_png)
            except ValueError as error:
                raise ApiError(422, "invalid_feedback", f"mask: {error}") from error
            if mask.shape != (height, width):
                raise ApiError(
                    422,
                    "invalid_feedback",
                    f"mask: size {mask.shape[1]}x{mask.shape[0]} differs from the image's {width}x{height}",
                )
            if int(mask.max()) >= contract.num_classes:
                bad = sorted(int(v) for v in np.unique(mask) if v >= contract.num_classes)
                raise ApiError(
                    422, "invalid_feedback", f"mask: class ids {bad} are not in 0..{contract.num_classes - 1}"
                )
            return [image, (folder / "masks" / f"{entry_id}.png", encode_mask_png(mask))]
        if contract.task == Task.DETECTION:
            boxes = (target or {}).get("boxes")
            if not isinstance(boxes, list):
                raise ApiError(
                    422,
                    "invalid_feedback",
                    'target.boxes: expected [{"box": [x1, y1, x2, y2], "label": ...}]',
                )
            lines = []
            for i, item in enumerate(boxes):
                box, label = (
                    item.get("box") if isinstance(item, dict) else None,
                    item.get("label") if isinstance(item, dict) else None,
                )
                if label not in contract.labels.names:
                    raise ApiError(
                        422,
                        "invalid_feedback",
                        f"target.boxes[{i}].label: {label!r} is not one of {contract.labels.names}",
                    )
                if not (
                    isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
                ):
                    raise ApiError(
                        422, "invalid_feedback", f"target.boxes[{i}].box: expected [x1, y1, x2, y2] in pixels"
                    )
                x1, y1, x2, y2 = box
                if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                    raise ApiError(
                        422,
                        "invalid_feedback",
                        f"target.boxes[{i}].box: {box} is not inside the {width}x{height} image",
                    )
                cx, cy, w, h = (
                    (x1 + x2) / 2 / width,
                    (y1 + y2) / 2 / height,
                    (x2 - x1) / width,
                    (y2 - y1) / height,
                )
                lines.append(f"{contract.labels.index(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            return [image, (folder / "labels" / f"{entry_id}.txt", ("\n".join(lines) + "\n").encode())]
        label = (target or {}).get("label")
        if label not in contract.labels.names:
            raise ApiError(
                422, "invalid_feedback", f"target.label: {label!r} is not one of {contract.labels.names}"
            )
        return [(folder / label / f"{entry_id}.png", image_png)]

    def records(self, model: str) -> list[dict[str, Any]]:
        path = self.folder(model) / "index.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def summary(self, model: str, since: float = 0.0) -> dict[str, Any]:
        records = self.records(model)
        by_version: dict[str, dict[str, int]] = {}
        for record in records:
            counts = by_version.setdefault(
                record["version"] or "unknown", {"correct": 0, "wrong": 0, "corrections": 0}
            )
            counts[record["verdict"] or "wrong"] = counts.get(record["verdict"] or "wrong", 0) + 1
            counts["corrections"] += record["kind"] == "correction"
        return {
            "model": model,
            "total": len(records),
            "corrections": sum(r["kind"] == "correction" for r in records),
            "correct": sum(r["verdict"] == "correct" for r in records),
            "wrong": sum(r["verdict"] == "wrong" for r in records),
            "corrections_since_last_version": sum(
                r["kind"] == "correction" and r["created_at"] > since for r in records
            ),
            "by_version": by_version,
        }


def _yolo_yaml(contract: ModelContract) -> str:
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(contract.labels.names))
    header = f"# YOLO layout of {contract.model_name} feedback (written by the gateway)"
    return f"{header}\npath: .\ntrain: images\nnames:\n{names}\n"
