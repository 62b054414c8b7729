"""Active learning: the gateway picks production inputs worth labelling and queues them "to label".

For every prediction the gateway makes (the images routes and every frame of a video job) a sampler
asks, in this order, whether the input is worth a human's label, and why:

- ``class_based``: the model predicted a class on the model's watch list (``PRODSEG_TO_LABEL_WATCH``,
  e.g. the rare classes): classification's top class; a detection scoring at least the uncertain
  band's floor; a segmentation class covering at least ``WATCH_MIN_PIXEL_SHARE`` of the image.
- ``low_confidence``, per task:
  - classification: the top probability is under ``min_confidence`` or the top-2 margin under
    ``min_margin``;
  - detection: at least ``MIN_UNCERTAIN_BOXES`` boxes score inside the uncertain band and they are at
    least ``uncertain_share`` of the boxes scoring above its floor (a detector always emits some
    middling boxes; an image is worth labelling when they are most of what it saw);
  - segmentation: the served output is class ids only, with no per-pixel confidence, so the proxy is
    an *atypical output*: a class covers a share of the image that the model gave on fewer than
    ``rare_output_tail`` of its held-out images (either tail of that class's shares in the served
    version's ``drift_reference.json``). Measured with the shelf model (ONNX Runtime, 2026-12-01):
    15/15 noise, blurred-and-noisy and flat images and 12/15 darkened shelves were flagged, 0/15
    clean held-out-style shelves. A mask-fragmentation proxy (speckle count, boundary density) was
    tried and rejected: it did not separate those inputs from clean ones. A version without a
    reference has no segmentation ``low_confidence``.
- ``temporal_instability`` (video): consecutive frames disagree: segmentation masks' mean IoU over
  the classes present, detection sets' match ratio (same class, IoU >= 0.5, boxes above the band's
  floor), or for classification one minus the total-variation distance of the probabilities, falls
  under ``min_frame_agreement``. The later frame is queued.

Each item's ``score`` is in [0, 1], higher meaning more worth a label (uncertainty, instability, or the
watched class's strength). Rate caps per model: a token bucket refilled at ``per_hour`` samples an
hour (bursts up to ``per_hour``), a ``queue_cap`` on open items, and within one video at most one
sample per ``video_gap_frames`` frames. The queue is durable: rows in the gateway's SQLite store
(``gateway.store``) and the input as a PNG under ``<data dir>/to_label/<model>/<id>.png``, written
atomically before its row. Completing an item (feedback with ``to_label_id``) removes its PNG: the
image then lives in the feedback dataset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from clients.atomic import write_bytes
from clients.contract import ModelContract, Task
from clients.drift import reference_path
from clients.results import Classification, Detections, FrameResult, Prediction, Segmentation
from gateway.errors import ApiError
from gateway.store import GatewayStore

log = logging.getLogger("prodseg.gateway.active_learning")

REASONS = ("class_based", "low_confidence", "temporal_instability")
WATCH_MIN_PIXEL_SHARE = 0.001  # a watched segmentation class counts once it covers this much
MIN_UNCERTAIN_BOXES = 2  # one lone middling box is what a detector emits on most images
MATCH_IOU = 0.5  # two boxes of consecutive frames are the same object at this IoU
MASK_STRIDE = 4  # masks are compared on every 4th pixel: the same shares/IoU to ~2 decimals, 16x cheaper
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PRODSEG_{name}", default)


def _fraction(name: str, default: str) -> float:
    """``PRODSEG_<name>`` as a number in [0, 1] (the default when unset); out of range: named."""
    value = float(_env(name, default))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"PRODSEG_{name} must be in [0, 1], got {value}")
    return value


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError as error:
        raise ValueError(f"PRODSEG_TO_LABEL_DETECTION_BAND must be 'low,high', got {text!r}") from error
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"PRODSEG_TO_LABEL_DETECTION_BAND needs 0 <= low < high <= 1, got {text!r}")
    return low, high


def _watch(text: str) -> dict[str, tuple[str, ...]]:
    """``{"model": ["class", ...]}`` from PRODSEG_TO_LABEL_WATCH (empty: no watch list)."""
    if not text.strip():
        return {}
    try:
        watch = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"PRODSEG_TO_LABEL_WATCH is not JSON: {error}") from error
    if not isinstance(watch, dict) or not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in watch.values()
    ):
        raise ValueError('PRODSEG_TO_LABEL_WATCH must be {"model": ["class", ...]}')
    return {model: tuple(names) for model, names in watch.items()}


@dataclass(frozen=True)
class ActiveLearningSettings:
    """``PRODSEG_*`` environment variables (the README's gateway settings table lists them)."""

    enabled: bool = field(
        default_factory=lambda: _env("ACTIVE_LEARNING", "true").lower() in ("1", "true", "yes", "on")
    )
    per_hour: float = field(default_factory=lambda: float(_env("TO_LABEL_PER_HOUR", "30")))
    queue_cap: int = field(default_factory=lambda: int(_env("TO_LABEL_QUEUE_CAP", "500")))
    # Defaults measured on the published models (ONNX Runtime, generated data, 2026-12-01): the
    # returns classifier falls under them on ~5% of held-out-style images and ~35% of noise images; the
    # mask detector's band rule flags most noise images and a minority of held-out-style scenes.
    min_confidence: float = field(default_factory=lambda: _fraction("TO_LABEL_MIN_CONFIDENCE", "0.5"))
    min_margin: float = field(default_factory=lambda: _fraction("TO_LABEL_MIN_MARGIN", "0.1"))
    detection_band: tuple[float, float] = field(
        default_factory=lambda: _band(_env("TO_LABEL_DETECTION_BAND", "0.3,0.5"))
    )
    uncertain_share: float = field(default_factory=lambda: _fraction("TO_LABEL_UNCERTAIN_SHARE", "0.75"))
    rare_output_tail: float = field(default_factory=lambda: _fraction("TO_LABEL_RARE_OUTPUT_TAIL", "0.005"))
    watch: dict[str, tuple[str, ...]] = field(default_factory=lambda: _watch(_env("TO_LABEL_WATCH", "")))
    # A panning shelf video's consecutive masks agree at mean IoU ~0.72 (0.67 at worst); a scene cut
    # at ~0.46. Detection match ratio and classification agreement use the same threshold.
    min_frame_agreement: float = field(
        default_factory=lambda: _fraction("TO_LABEL_MIN_FRAME_AGREEMENT", "0.5")
    )
    video_gap_frames: int = field(default_factory=lambda: int(_env("TO_LABEL_VIDEO_GAP_FRAMES", "30")))

    def __post_init__(self) -> None:
        if self.per_hour < 0 or self.queue_cap < 0 or self.video_gap_frames < 1:
            raise ValueError("PRODSEG_TO_LABEL_PER_HOUR and _QUEUE_CAP must be >= 0, _VIDEO_GAP_FRAMES >= 1")


@dataclass(frozen=True)
class Sample:
    """Why an input is worth labelling: a reason of ``REASONS``, a score in [0, 1], in words."""

    reason: str
    score: float
    detail: str


# ---- the reasons, as pure functions of typed predictions ----------------------------------------------


@dataclass(frozen=True)
class OutputReference:
    """Per class, the sorted shares of the image the model gave on its held-out set."""

    shares: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path, class_names: list[str]) -> OutputReference | None:
        try:
            numeric = json.loads(path.read_text())["numeric"]
            shares = {name: np.sort(np.asarray(numeric[f"share_{name}"], float)) for name in class_names}
        except (OSError, KeyError, ValueError, TypeError):
            return None
        return cls(shares) if all(len(values) for values in shares.values()) else None

    def rarest(self, shares: np.ndarray) -> tuple[float, str, float]:
        """(tail probability, class, share) of the class whose share is the least typical."""
        found = (1.0, "", 0.0)
        for (name, reference), share in zip(self.shares.items(), shares, strict=True):
            below = np.searchsorted(reference, share, side="right") / len(reference)
            above = 1.0 - np.searchsorted(reference, share, side="left") / len(reference)
            tail = float(min(below, above))
            if tail < found[0]:
                found = (tail, name, float(share))
        return found


def mask_shares(mask: np.ndarray, num_classes: int) -> np.ndarray:
    sparse = mask[::MASK_STRIDE, ::MASK_STRIDE]
    return np.bincount(sparse.ravel(), minlength=num_classes)[:num_classes] / max(sparse.size, 1)


def class_based(
    prediction: Prediction, names: list[str], watch: tuple[str, ...], settings: ActiveLearningSettings
) -> Sample | None:
    """A watched class in the prediction; score: its probability, best box score or pixel share."""
    watched = [i for i, name in enumerate(names) if name in watch]
    if not watched:
        return None
    if isinstance(prediction, Classification):
        if prediction.class_id in watched:
            return Sample(
                "class_based",
                prediction.confidence,
                f"predicted {names[prediction.class_id]} ({prediction.confidence:.2f}), a watched class",
            )
        return None
    if isinstance(prediction, Detections):
        hits = np.isin(prediction.class_id, watched) & (prediction.confidence >= settings.detection_band[0])
        if hits.any():
            best = int(np.flatnonzero(hits)[np.argmax(prediction.confidence[hits])])
            label, score = names[int(prediction.class_id[best])], float(prediction.confidence[best])
            return Sample(
                "class_based",
                score,
                f"{int(hits.sum())} box(es) of watched classes, best {label} {score:.2f}",
            )
        return None
    shares = mask_shares(prediction.mask, len(names))
    present = [i for i in watched if shares[i] >= WATCH_MIN_PIXEL_SHARE]
    if present:
        top = max(present, key=lambda i: shares[i])
        return Sample(
            "class_based",
            float(shares[top]),
            f"{names[top]} covers {shares[top]:.3f} of the image, a watched class",
        )
    return None


def low_confidence(
    prediction: Prediction,
    names: list[str],
    settings: ActiveLearningSettings,
    reference: OutputReference | None,
) -> Sample | None:
    if isinstance(prediction, Classification):
        (top, p1), (_, p2) = prediction.top(2)
        margin = p1 - p2
        if p1 < settings.min_confidence or margin < settings.min_margin:
            return Sample(
                "low_confidence",
                round(1.0 - margin, 5),
                f"top {names[top]} {p1:.2f}, margin to the next {margin:.2f}",
            )
        return None
    if isinstance(prediction, Detections):
        low, high = settings.detection_band
        seen = prediction.confidence >= low
        uncertain = seen & (prediction.confidence < high)
        count, share = int(uncertain.sum()), float(uncertain.sum() / max(int(seen.sum()), 1))
        if count >= MIN_UNCERTAIN_BOXES and share >= settings.uncertain_share:
            return Sample(
                "low_confidence",
                round(share, 5),
                f"{count} of {int(seen.sum())} boxes score in [{low}, {high})",
            )
        return None
    if reference is None:
        return None
    tail, name, share = reference.rarest(mask_shares(prediction.mask, len(names)))
    if tail < settings.rare_output_tail:
        return Sample(
            "low_confidence",
            round(1.0 - tail, 5),
            f"atypical output: {name} covers {share:.3f} of the image, a share the model gave on "
            f"{tail:.1%} of its held-out images",
        )
    return None


def frame_agreement(previous: Prediction, current: Prediction, num_classes: int, box_floor: float) -> float:
    """How much two consecutive frames' predictions agree, in [0, 1] (1: the same)."""
    if isinstance(current, Segmentation) and isinstance(previous, Segmentation):
        a = previous.mask[::MASK_STRIDE, ::MASK_STRIDE]
        b = current.mask[::MASK_STRIDE, ::MASK_STRIDE]
        if a.shape != b.shape:
            return 0.0
        ious = []
        for class_id in np.union1d(np.unique(a), np.unique(b)):
            x, y = a == class_id, b == class_id
            ious.append((x & y).sum() / (x | y).sum())
        return float(np.mean(ious))
    if isinstance(current, Detections) and isinstance(previous, Detections):
        a = previous.with_min_confidence(box_floor)
        b = current.with_min_confidence(box_floor)
        if len(a) + len(b) == 0:
            return 1.0
        return 2 * _matched_boxes(a, b) / (len(a) + len(b))
    if isinstance(current, Classification) and isinstance(previous, Classification):
        return float(1.0 - 0.5 * np.abs(current.probabilities - previous.probabilities).sum())
    return 0.0


def _matched_boxes(a: Detections, b: Detections) -> int:
    """Greedy one-to-one matches of the same class at IoU >= MATCH_IOU, best pairs first."""
    x1 = np.maximum(a.xyxy[:, None, 0], b.xyxy[None, :, 0])
    y1 = np.maximum(a.xyxy[:, None, 1], b.xyxy[None, :, 1])
    x2 = np.minimum(a.xyxy[:, None, 2], b.xyxy[None, :, 2])
    y2 = np.minimum(a.xyxy[:, None, 3], b.xyxy[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    iou = inter / np.maximum(area(a.xyxy)[:, None] + area(b.xyxy)[None, :] - inter, 1e-9)
    iou[a.class_id[:, None] != b.class_id[None, :]] = 0.0
    pairs = np.argwhere(iou >= MATCH_IOU)  # few on real frames: about one per object
    used_a, used_b = set(), set()
    for i, j in pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


# ---- rate caps -----------------------------------------------------------------------------------------


class TokenBucket:
    """``per_hour`` tokens an hour, holding at most ``per_hour`` (so a burst never exceeds one hour's)."""

    def __init__(self, per_hour: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.rate = per_hour, per_hour / 3600.0
        self.clock = clock
        self.tokens, self.updated = per_hour, clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# ---- the durable queue ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToLabelItem:
    id: str
    model: str
    version: str
    reason: str
    score: float
    detail: str
    created_at: float
    prediction: dict[str, Any]  # the prediction's summary (class shares, counts per class, or label)
    source: str  # "image" or "video"
    filename: str
    width: int
    height: int
    job_id: str | None = None
    frame_index: int | None = None
    completed_at: float | None = None
    feedback_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = {name: getattr(self, name) for name in self.__dataclass_fields__}
        body["state"] = "to_label" if self.completed_at is None else "labelled"
        body["image_url"] = f"/v1/models/{self.model}/feedback/to_label/{self.id}/image"
        return body


class ToLabelQueue:
    """Items in the store's ``to_label`` table; each item's input as a PNG under ``root/<model>/``."""

    def __init__(self, store: GatewayStore, root: Path) -> None:
        self.store, self.root = store, Path(root)

    def image_path(self, item: ToLabelItem) -> Path:
        return self.root / item.model / f"{item.id}.png"

    def add(self, item: ToLabelItem, image_png: bytes) -> None:
        """The image first (atomically), then the row: a listed item always has its image."""
        write_bytes(self.image_path(item), image_png)
        self.store.add_to_label(item.id, item.model, item.created_at, _body(item))

    def open_count(self, model: str) -> int:
        return self.store.count_to_label(model)

    def items(self, model: str, limit: int) -> list[ToLabelItem]:
        """Open items, newest first."""
        return [_item(body) for body in self.store.to_label_items(model, limit)]

    def get(self, model: str, item_id: str) -> ToLabelItem:
        """The item, open or labelled; ``ApiError`` 404 when this model has none with that id."""
        body = self.store.to_label_item(model, item_id)
        if body is None:
            raise ApiError(404, "to_label_not_found", f"no item {item_id!r} in {model}'s to-label queue")
        return _item(body)

    def claim(self, model: str, item_id: str) -> ToLabelItem:
        """Take an open item for completion (atomic: two labellers cannot both complete it);
        404 when unknown, 409 when already labelled."""
        item = self.get(model, item_id)
        if item.completed_at is not None or not self.store.complete_to_label(item_id, time.time()):
            raise ApiError(409, "already_labelled", f"item {item_id!r} was already labelled")
        return item

    def release(self, item: ToLabelItem) -> None:
        """Put a claimed item back (its feedback was refused)."""
        self.store.reopen_to_label(item.id)

    def finish(self, item: ToLabelItem, feedback_id: str) -> None:
        """The feedback is stored: record which entry labelled the item, drop its queued image."""
        self.store.set_to_label_feedback(item.id, feedback_id)
        self.image_path(item).unlink(missing_ok=True)


def _body(item: ToLabelItem) -> dict[str, Any]:
    """The fields kept as JSON; the completion ones are columns of their own."""
    return {
        name: getattr(item, name)
        for name in item.__dataclass_fields__
        if name not in ("completed_at", "feedback_id")
    }


def _item(row: dict[str, Any]) -> ToLabelItem:
    names = ToLabelItem.__dataclass_fields__
    return ToLabelItem(**{name: value for name, value in row.items() if name in names})


# ---- the sampler -----------------------------------------------------------------------------------------


class ActiveLearner:
    """Decides per prediction (cheap, on the request path) and queues the samples (in a worker thread)."""

    def __init__(
        self,
        settings: ActiveLearningSettings,
        queue: ToLabelQueue,
        repository: Path,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.queue, self.repository = settings, queue, Path(repository)
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._references: dict[tuple[str, str], OutputReference | None] = {}
        self._lock = threading.Lock()
        self.samples = Counter(
            "prodseg_gateway_to_label_samples",
            "Inputs found worth labelling, by outcome (queued, rate_capped, queue_full)",
            ["model", "reason", "outcome"],
            registry=registry,
        )

    def assess(
        self,
        contract: ModelContract,
        version: str,
        prediction: Prediction,
        previous: Prediction | None = None,
    ) -> Sample | None:
        """The first reason this prediction is worth labelling (``previous``: the video's last frame)."""
        if not self.settings.enabled:
            return None
        names = contract.labels.names
        watch = self.settings.watch.get(contract.model_name, ())
        sample = class_based(prediction, names, watch, self.settings)
        sample = sample or low_confidence(
            prediction, names, self.settings, self._reference(contract, version)
        )
        if sample is None and previous is not None:
            agreement = frame_agreement(previous, prediction, len(names), self.settings.detection_band[0])
            if agreement < self.settings.min_frame_agreement:
                sample = Sample(
                    "temporal_instability",
                    round(1.0 - agreement, 5),
                    f"agreement with the previous frame {agreement:.2f} "
                    f"< {self.settings.min_frame_agreement}",
                )
        return sample

    def offer(
        self,
        contract: ModelContract,
        version: str,
        sample: Sample,
        prediction: Prediction,
        frame: np.ndarray,
        data: bytes | None,
        source: str,
        filename: str,
        job_id: str | None = None,
        frame_index: int | None = None,
        found_at: float | None = None,
    ) -> ToLabelItem | None:
        """Queue the input if the model's caps allow (blocking: call it in a worker thread).
        ``data``: the upload's bytes, kept as they are when already a PNG; ``found_at``: when the
        sample was decided (default now), so items queued by racing worker threads keep their order."""
        model = contract.model_name
        with self._lock:
            if self.queue.open_count(model) >= self.settings.queue_cap:
                outcome = "queue_full"
            else:
                bucket = self._buckets.setdefault(model, TokenBucket(self.settings.per_hour, self._clock))
                outcome = "queued" if bucket.take() else "rate_capped"
        self.samples.labels(model, sample.reason, outcome).inc()
        if outcome != "queued":
            return None
        if data is not None and data.startswith(PNG_MAGIC):
            png = data
        else:
            png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
        item = ToLabelItem(
            id=uuid.uuid4().hex,
            model=model,
            version=version,
            reason=sample.reason,
            score=round(float(sample.score), 5),
            detail=sample.detail,
            created_at=time.time() if found_at is None else found_at,
            prediction=prediction.summary(contract.labels),
            source=source,
            filename=filename,
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
            job_id=job_id,
            frame_index=frame_index,
        )
        self.queue.add(item, png)
        return item

    def watch_video(
        self, contract: ModelContract, job_id: str, filename: str
    ) -> Callable[[np.ndarray, FrameResult], None]:
        """A video pipeline's ``on_result`` hook: runs in the event loop, so it only decides; a sample
        is queued by a worker thread. At most one sample per ``video_gap_frames`` frames."""
        previous: Prediction | None = None
        last_sampled = -self.settings.video_gap_frames
        last_found_at = 0.0
        loop = asyncio.get_running_loop()

        def on_result(frame: np.ndarray, result: FrameResult) -> None:
            nonlocal previous, last_sampled, last_found_at
            before, previous = previous, result.prediction
            if result.frame_index - last_sampled < self.settings.video_gap_frames:
                return
            sample = self.assess(contract, result.model_version, result.prediction, before)
            if sample is None:
                return
            last_sampled = result.frame_index
            # strictly increasing, so the queue lists a video's samples newest frame first
            last_found_at = max(time.time(), last_found_at + 1e-6)
            loop.run_in_executor(
                None,
                self._offer_logged,
                contract,
                result.model_version,
                sample,
                result.prediction,
                frame,
                "video",
                filename,
                job_id,
                result.frame_index,
                last_found_at,
            )

        return on_result

    def _offer_logged(
        self, contract, version, sample, prediction, frame, source, filename, job_id, index, found_at
    ) -> None:
        try:
            self.offer(
                contract, version, sample, prediction, frame, None, source, filename, job_id, index, found_at
            )
        except Exception:  # a sample lost must never fail the video job
            log.exception("could not queue frame %s of job %s to label", index, job_id)

    def _reference(self, contract: ModelContract, version: str) -> OutputReference | None:
        """The served version's held-out class shares (segmentation only), loaded once."""
        if contract.task != Task.SEGMENTATION or not version.isdigit():
            return None
        key = (contract.model_name, version)
        if key not in self._references:
            path = reference_path(contract.model_name, int(version), self.repository)
            self._references[key] = OutputReference.load(path, contract.labels.names)
        return self._references[key]
