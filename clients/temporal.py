"""Temporal reuse on video: infer keyframes only and carry their results to the frames between.

Consecutive frames of a video mostly show the same scene, moved a little. With reuse on, the model runs
on keyframes only; every other frame gets its keyframe's result warped by the camera's motion since
the keyframe (a global affine motion estimated on small grey images, ~1-2 ms a frame). Every frame
still gets a result (``FrameResult.source`` says ``"inferred"`` or ``"propagated"``).

A new keyframe is inferred as soon as the propagated result stops being trustworthy, judged on each
frame against the current keyframe (thresholds below, each multiplied by ``tolerance``):

- ``uncovered``: the share of the frame the warped keyframe does not cover (what came into view);
- ``motion``: how far the frame's corners moved, as a share of its diagonal;
- ``mismatch``: 1 - normalised cross-correlation of the aligned grey images over the part both see.
  This is the per-stream error estimate: it rises when tracking fails, when things move by
  themselves, or when the motion is not the global one the model assumes;
- ``scene_change``: the Bhattacharyya distance of the grey histograms (a cut; not scaled);
- and always when ``max_interval`` frames have passed since the keyframe.

Two directions: a live stream (``Direction.LIVE``) only knows the past, so it propagates forwards
and allows little uncovered area. A video job (``Direction.JOB``) may wait for the next keyframe:
what came into view since the previous keyframe is filled from the next one (warped backwards),
so it allows much more motion between keyframes for the same quality. A live stream may buy the
same with latency: ``lookahead`` N lets a frame's result wait for a keyframe at most N frames later
(keyframes are then at most N + 1 frames apart), so results arrive up to N frame intervals late.

``ReuseSettings`` is the option (per request or job); ``KeyframeReuse`` wraps a ``TritonModelClient``
for video jobs, ``LiveReuse`` serves live streams (``clients.live``, the gateway's live socket).
Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import cv2
import numpy as np

from clients.results import Detections, FrameResult, Prediction, Segmentation
from clients.triton_client import TritonModelClient


class ReuseMode(StrEnum):
    OFF = "off"  # every frame is inferred
    AUTO = "auto"  # keyframes only, chosen adaptively


class MotionModel(StrEnum):
    TRANSLATION = "translation"  # cv2.phaseCorrelate: pans and tilts (the cheaper one)
    SIMILARITY = "similarity"  # LK-tracked corners + RANSAC: also rotation and zoom


class Direction(StrEnum):
    LIVE = "live"  # results are due now: propagate forwards from the last keyframe only
    JOB = "job"  # frames may wait for the next keyframe: fill what came into view from it


DEFAULT_MAX_INTERVAL = 8  # frames; measured in benchmarks/temporal_bench.py
MAX_INTERVAL_LIMIT = 30  # a video job holds up to (requests in flight x max_interval) frames
MAX_TOLERANCE = 4.0

# Thresholds at tolerance 1.0 (benchmarks/results/temporal.json shows what they cost and save).
MAX_UNCOVERED = {Direction.LIVE: 0.05, Direction.JOB: 0.25}  # share of the frame not seen by the keyframe
MAX_MOTION = 0.25  # largest corner displacement, share of the frame's diagonal
MAX_MISMATCH = 0.15  # aligned frames of these pans stay below 0.07; unrelated ones are above 0.2
MAX_SCENE_CHANGE = 0.3  # Bhattacharyya distance; 0.1 over 12 frames of a pan under drifting light

ANALYSIS_WIDTH = 160  # motion is estimated on grey images this wide
HISTOGRAM_BINS = 32
MIN_TRACKED_POINTS = 8  # similarity model: fewer tracked corners than this is lost tracking


@dataclass(frozen=True)
class ReuseSettings:
    """Temporal reuse, per request or job: ``mode`` off (default) or auto, and its two knobs."""

    mode: ReuseMode = ReuseMode.OFF
    max_interval: int = DEFAULT_MAX_INTERVAL  # keyframes are at most this many frames apart
    tolerance: float = 1.0  # multiplies the thresholds: < 1 infers more often, > 1 less
    motion: MotionModel = MotionModel.TRANSLATION
    # Live streams only: frames a result may wait for the next keyframe (0: forwards only, no wait).
    # A video job always fills from the next keyframe.
    lookahead: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("mode", ReuseMode), ("motion", MotionModel)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                allowed = ", ".join(member.value for member in kind)
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None
        if isinstance(self.max_interval, bool) or not isinstance(self.max_interval, int):
            raise ValueError(f"max_interval must be an integer, got {self.max_interval!r}")
        if not 1 <= self.max_interval <= MAX_INTERVAL_LIMIT:
            raise ValueError(f"max_interval must be 1..{MAX_INTERVAL_LIMIT}, got {self.max_interval}")
        if not 0 < self.tolerance <= MAX_TOLERANCE:
            raise ValueError(f"tolerance must be > 0 and <= {MAX_TOLERANCE}, got {self.tolerance}")
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int):
            raise ValueError(f"lookahead must be an integer, got {self.lookahead!r}")
        if not 0 <= self.lookahead < MAX_INTERVAL_LIMIT:
            raise ValueError(f"lookahead must be 0..{MAX_INTERVAL_LIMIT - 1} frames, got {self.lookahead}")

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> ReuseSettings:
        """From text options (a query string): ``reuse``, ``max_interval``, ``tolerance``, ``lookahead``.

        A ``ValueError`` names the option at fault. The knobs are checked even with reuse off (where
        they do nothing), so a request's options are valid or not whatever its mode."""
        mode = options.get("reuse", ReuseMode.OFF.value)
        try:
            max_interval = int(options.get("max_interval", DEFAULT_MAX_INTERVAL))
        except ValueError:
            raise ValueError(f"max_interval must be an integer, got {options['max_interval']!r}") from None
        try:
            tolerance = float(options.get("tolerance", 1.0))
        except ValueError:
            raise ValueError(f"tolerance must be a number, got {options['tolerance']!r}") from None
        try:
            lookahead = int(options.get("lookahead", 0))
        except ValueError:
            raise ValueError(f"lookahead must be an integer, got {options['lookahead']!r}") from None
        try:
            return cls(mode, max_interval, tolerance, lookahead=lookahead)
        except ValueError as error:
            raise ValueError(str(error).replace("mode must", "reuse must", 1)) from None

    @property
    def enabled(self) -> bool:
        return self.mode == ReuseMode.AUTO

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "max_interval": self.max_interval,
            "tolerance": self.tolerance,
            "motion": self.motion.value,
            "lookahead": self.lookahead,
        }

    def for_live(self) -> tuple[ReuseSettings, Direction]:
        """The settings and thresholds a live stream plans with: forwards only, or with ``lookahead``
        the job's thresholds and keyframes at most ``lookahead`` + 1 frames apart."""
        if self.lookahead == 0:
            return self, Direction.LIVE
        capped = dataclasses.replace(self, max_interval=min(self.max_interval, self.lookahead + 1))
        return capped, Direction.JOB


REUSE_OFF = ReuseSettings()


# ---- motion between a keyframe and a frame ----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FrameView:
    """What motion estimation needs of a frame: a small grey copy and its histogram."""

    grey: np.ndarray  # uint8 [h, w], ANALYSIS_WIDTH wide
    histogram: np.ndarray  # float32 [HISTOGRAM_BINS], sums to 1
    height: int  # the frame's own size
    width: int

    @classmethod
    def of(cls, frame: np.ndarray) -> FrameView:
        height, width = frame.shape[:2]
        small_width = min(ANALYSIS_WIDTH, width)
        small_height = max(1, round(height * small_width / width))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        grey = cv2.resize(grey, (small_width, small_height), interpolation=cv2.INTER_AREA)
        histogram = cv2.calcHist([grey], [0], None, [HISTOGRAM_BINS], [0, 256]).ravel()
        return cls(grey, histogram / max(float(histogram.sum()), 1.0), height, width)

    @property
    def scale(self) -> np.ndarray:
        """Full-frame pixels -> analysis pixels, as a 3x3 matrix."""
        sy, sx = self.grey.shape[0] / self.height, self.grey.shape[1] / self.width
        return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], np.float64)


@dataclass(frozen=True, eq=False)
class Motion:
    """How a frame relates to its keyframe."""

    matrix: np.ndarray  # float64 [2, 3]: keyframe pixels -> this frame's pixels
    uncovered: float  # share of this frame the warped keyframe does not cover
    displacement: float  # largest corner displacement, share of the frame's diagonal
    mismatch: float  # 1 - NCC of the aligned grey images where both see (0 = identical, 1 = unrelated)
    scene_change: float  # Bhattacharyya distance of the grey histograms

    def to_dict(self) -> dict[str, float]:
        return {
            "dx": round(float(self.matrix[0, 2]), 2),
            "dy": round(float(self.matrix[1, 2]), 2),
            "uncovered": round(self.uncovered, 4),
            "displacement": round(self.displacement, 4),
            "mismatch": round(self.mismatch, 4),
            "scene_change": round(self.scene_change, 4),
        }


class MotionEstimator:
    """Global motion keyframe -> frame on the small grey views, with its quality measures."""

    def __init__(self, model: MotionModel = MotionModel.TRANSLATION) -> None:
        self.model = MotionModel(model)
        self._windows: dict[tuple[int, int], np.ndarray] = {}

    def estimate(self, key: FrameView, frame: FrameView) -> Motion:
        scene_change = float(cv2.compareHist(key.histogram, frame.histogram, cv2.HISTCMP_BHATTACHARYYA))
        if key.grey.shape != frame.grey.shape:
            return _lost(scene_change)  # a different size is a different stream
        small = (
            self._translation(key.grey, frame.grey)
            if self.model == MotionModel.TRANSLATION
            else _similarity(key.grey, frame.grey)
        )
        if small is None:
            return _lost(scene_change)
        uncovered, mismatch = _alignment(key.grey, frame.grey, small)
        scale = key.scale
        full = (np.linalg.inv(scale) @ np.vstack([small, [0, 0, 1]]) @ scale)[:2]
        return Motion(full, uncovered, _displacement(full, key.height, key.width), mismatch, scene_change)

    def _translation(self, key: np.ndarray, frame: np.ndarray) -> np.ndarray | None:
        window = self._windows.get(key.shape)
        if window is None:
            window = self._windows[key.shape] = cv2.createHanningWindow(key.shape[::-1], cv2.CV_32F)
        # phaseCorrelate windows its inputs in place: hand it copies.
        (dx, dy), _ = cv2.phaseCorrelate(key.astype(np.float32), frame.astype(np.float32), window)
        return np.array([[1, 0, dx], [0, 1, dy]], np.float64)


def _similarity(key: np.ndarray, frame: np.ndarray) -> np.ndarray | None:
    corners = cv2.goodFeaturesToTrack(key, maxCorners=200, qualityLevel=0.01, minDistance=5)
    if corners is None or len(corners) < MIN_TRACKED_POINTS:
        return None
    moved, status, _ = cv2.calcOpticalFlowPyrLK(key, frame, corners, None, winSize=(15, 15), maxLevel=3)
    tracked = status.ravel() == 1
    if tracked.sum() < MIN_TRACKED_POINTS:
        return None
    matrix, inliers = cv2.estimateAffinePartial2D(
        corners[tracked], moved[tracked], method=cv2.RANSAC, ransacReprojThreshold=1.0
    )
    if matrix is None or inliers.sum() < MIN_TRACKED_POINTS:
        return None
    return matrix.astype(np.float64)


def _alignment(key: np.ndarray, frame: np.ndarray, matrix: np.ndarray) -> tuple[float, float]:
    """(uncovered share, mismatch) of ``key`` warped by ``matrix`` onto ``frame``."""
    size = frame.shape[::-1]
    warped = cv2.warpAffine(key, matrix, size, flags=cv2.INTER_LINEAR)
    seen = cv2.warpAffine(np.ones_like(key), matrix, size, flags=cv2.INTER_NEAREST)
    uncovered = 1.0 - float(seen.mean())
    inside = cv2.erode(seen, np.ones((3, 3), np.uint8)).astype(bool)  # no interpolated border pixels
    if inside.sum() < 0.05 * inside.size:
        return uncovered, 1.0
    a = warped[inside].astype(np.float64)
    b = frame[inside].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denominator == 0.0:  # flat images: nothing to align, nothing to tell apart
        return uncovered, 0.0 if np.array_equal(a, b) else 1.0
    return uncovered, float(np.clip(1.0 - (a * b).sum() / denominator, 0.0, 1.0))


def _displacement(matrix: np.ndarray, height: int, width: int) -> float:
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64)
    moved = corners @ matrix.T
    return float(np.linalg.norm(moved - corners[:, :2], axis=1).max() / np.hypot(width, height))


def _lost(scene_change: float) -> Motion:
    return Motion(np.eye(2, 3), 1.0, 1.0, 1.0, scene_change)


def composed_backward(follower: Motion, following: Motion, height: int, width: int) -> Motion:
    """The motion from a later frame back to an earlier one, both measured from the same keyframe:
    ``follower`` composed with the inverse of ``following``. No new estimate (a live stream pays this
    per frame); it is as well aligned as the worse of the two it is made of."""
    to_follower = np.vstack([follower.matrix, [0, 0, 1]])
    to_following = np.vstack([following.matrix, [0, 0, 1]])
    matrix = (to_follower @ np.linalg.inv(to_following))[:2]
    return Motion(
        matrix,
        _uncovered_share(matrix, height, width),
        _displacement(matrix, height, width),
        max(follower.mismatch, following.mismatch),
        following.scene_change,
    )


def _uncovered_share(matrix: np.ndarray, height: int, width: int, step: int = 8) -> float:
    """Share of a ``height`` x ``width`` frame that ``matrix`` leaves uncovered (on a 1/``step`` grid)."""
    small = np.ones((max(1, height // step), max(1, width // step)), np.uint8)
    scaled = matrix.copy()
    scaled[:, 2] /= step
    seen = cv2.warpAffine(small, scaled, small.shape[::-1], flags=cv2.INTER_NEAREST)
    return 1.0 - float(seen.mean())


# ---- which frames are keyframes --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Plan:
    """What to do with one frame: infer it (a keyframe, with the reason) or propagate to it."""

    index: int
    keyframe: bool
    reason: str  # why a keyframe: first, max_interval, scene_change, mismatch, uncovered, motion
    view: FrameView
    motion: Motion | None = None  # from the current keyframe (None when there is none)
    keyframe_index: int | None = None  # the keyframe it is measured against


class KeyframePlanner:
    """Decides, frame by frame, whether the current keyframe still serves or a new one is needed."""

    def __init__(self, settings: ReuseSettings, direction: Direction) -> None:
        if not settings.enabled:
            raise ValueError("temporal reuse is off in these settings")
        self.settings = settings
        self.estimator = MotionEstimator(settings.motion)
        tolerance = settings.tolerance
        self.limits = {
            "uncovered": MAX_UNCOVERED[Direction(direction)] * tolerance,
            "motion": MAX_MOTION * tolerance,
            "mismatch": MAX_MISMATCH * tolerance,
            "scene_change": MAX_SCENE_CHANGE,
        }
        self._next_index = 0
        self._keyframe: Plan | None = None

    def plan(self, frame: np.ndarray) -> Plan:
        """Plan the next frame (frames are numbered in the order they are planned)."""
        index, self._next_index = self._next_index, self._next_index + 1
        view = FrameView.of(frame)
        key = self._keyframe
        if key is None:
            return Plan(index, True, "first", view)
        motion = self.estimator.estimate(key.view, view)
        reason = self.keyframe_reason(index - key.index, motion)
        return Plan(index, reason is not None, reason or "", view, motion, key.index)

    def keyframe_reason(self, interval: int, motion: Motion) -> str | None:
        """Why a frame ``interval`` frames after its keyframe must be a keyframe; None if it need not."""
        if interval >= self.settings.max_interval:
            return "max_interval"
        if motion.scene_change > self.limits["scene_change"]:
            return "scene_change"
        if motion.mismatch > self.limits["mismatch"]:
            return "mismatch"
        if motion.uncovered > self.limits["uncovered"]:
            return "uncovered"
        if motion.displacement > self.limits["motion"]:
            return "motion"
        return None

    def adopt(self, plan: Plan) -> None:
        """``plan``'s frame is inferred: the frames after it are measured against it."""
        self._keyframe = dataclasses.replace(plan, keyframe=True, motion=None, keyframe_index=plan.index)

    def forget(self, index: int) -> None:
        """The keyframe ``index`` failed: the next frame becomes a keyframe."""
        if self._keyframe is not None and self._keyframe.index == index:
            self._keyframe = None


# ---- carrying a result along the motion --------------------------------------------------------------


def propagate(prediction: Prediction, motion: Motion, height: int, width: int) -> Prediction:
    """A keyframe's prediction moved onto a frame of ``height`` x ``width``.

    Masks are warped with nearest neighbour (class ids never blend); what came into view takes the
    class at the keyframe's nearest edge. Boxes move with their corners and are clipped to the frame
    (boxes that left it are dropped). A classification is carried as is.
    """
    if isinstance(prediction, Segmentation):
        warped = cv2.warpAffine(
            prediction.mask,
            motion.matrix,
            (width, height),
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return Segmentation(warped)
    if isinstance(prediction, Detections):
        return _move_boxes(prediction, motion.matrix, height, width)
    return prediction


def covered(motion: Motion, height: int, width: int) -> np.ndarray:
    """Bool [height, width]: the pixels the warped keyframe covers."""
    ones = np.ones((height, width), np.uint8)
    return cv2.warpAffine(ones, motion.matrix, (width, height), flags=cv2.INTER_NEAREST).astype(bool)


def propagate_between(
    previous: Prediction,
    forward: Motion,
    following: Prediction | None,
    backward: Motion | None,
    height: int,
    width: int,
) -> Prediction:
    """A frame between two keyframes: ``previous`` carried forwards, and what came into view since
    taken from ``following`` carried backwards (``backward``: next keyframe -> this frame).

    Without a following keyframe this is ``propagate``. What neither keyframe saw takes the class at
    the previous keyframe's nearest edge; new boxes are those whose centre the previous did not see."""
    if following is None or backward is None:
        return propagate(previous, forward, height, width)
    if isinstance(previous, Segmentation) and isinstance(following, Segmentation):
        return Segmentation(_fill_mask(previous.mask, forward, following.mask, backward, height, width))
    if isinstance(previous, Detections) and isinstance(following, Detections):
        carried = _move_boxes(previous, forward.matrix, height, width)
        arriving = _move_boxes(following, backward.matrix, height, width)
        centres = (arriving.xyxy[:, :2] + arriving.xyxy[:, 2:]) / 2
        new = ~_seen_at(forward, centres, height, width)  # objects that came into view
        return Detections(
            np.concatenate([carried.xyxy, arriving.xyxy[new]]),
            np.concatenate([carried.confidence, arriving.confidence[new]]),
            np.concatenate([carried.class_id, arriving.class_id[new]]),
        )
    return propagate(previous, forward, height, width)


def carry_between(
    previous: Prediction,
    follower: Plan,
    following: Prediction | None,
    backward: Motion | None,
    tolerance: float,
) -> Prediction:
    """``follower``'s result between two keyframes: ``following`` fills what came into view only where
    its ``backward`` motion is trustworthy (else the frame is carried forwards only)."""
    usable = following is not None and backward is not None and backward.mismatch <= MAX_MISMATCH * tolerance
    return propagate_between(
        previous,
        follower.motion,
        following if usable else None,
        backward if usable else None,
        follower.view.height,
        follower.view.width,
    )


def carry_live(
    previous: Prediction, follower: Plan, following: tuple[Plan, Prediction] | None, tolerance: float
) -> Prediction:
    """A live stream's carried result: ``previous`` (its keyframe's) moved forwards, and with a
    lookahead what came into view filled from ``following`` (the next keyframe's plan and
    prediction). The motion back from it is composed from the motions both frames were planned with
    (no new estimate); a next keyframe measured from another keyframe (after a failure) is not used."""
    next_plan, next_prediction = following or (None, None)
    measured_alike = (
        next_plan is not None
        and next_plan.motion is not None
        and follower.motion is not None
        and next_plan.keyframe_index == follower.keyframe_index
    )
    backward = (
        composed_backward(follower.motion, next_plan.motion, follower.view.height, follower.view.width)
        if measured_alike
        else None
    )
    return carry_between(previous, follower, next_prediction, backward, tolerance)


HOLE = 255  # marks pixels a warped mask does not cover (no model here has 255 classes)


def _fill_mask(
    previous: np.ndarray, forward: Motion, following: np.ndarray, backward: Motion, height: int, width: int
) -> np.ndarray:
    if int(previous.max()) == HOLE or int(following.max()) == HOLE:  # class 255 is real: no marker
        seen = covered(forward, height, width)
        carried = propagate(Segmentation(previous), forward, height, width).mask
        arriving = propagate(Segmentation(following), backward, height, width).mask
        return np.where(seen, carried, arriving).astype(np.uint8)
    size, nearest = (width, height), cv2.INTER_NEAREST
    mask = cv2.warpAffine(previous, forward.matrix, size, flags=nearest, borderValue=HOLE)
    holes = mask == HOLE
    if holes.any():
        arriving = cv2.warpAffine(following, backward.matrix, size, flags=nearest, borderValue=HOLE)
        np.copyto(mask, arriving, where=holes)
        holes = mask == HOLE
    if holes.any():  # seen by neither keyframe
        np.copyto(mask, propagate(Segmentation(previous), forward, height, width).mask, where=holes)
    return mask


def _seen_at(motion: Motion, points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool [N]: which points of this frame the keyframe saw (mapped back inside its bounds)."""
    inverse = cv2.invertAffineTransform(motion.matrix)
    back = points @ inverse[:, :2].T + inverse[:, 2]
    return (back[:, 0] >= 0) & (back[:, 0] < width) & (back[:, 1] >= 0) & (back[:, 1] < height)


def _move_boxes(detections: Detections, matrix: np.ndarray, height: int, width: int) -> Detections:
    if not len(detections):
        return detections
    x1, y1, x2, y2 = detections.xyxy.astype(np.float64).T
    corners = np.stack([np.stack([x, y], 1) for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]  # [N, 4 corners, 2]
    low, high = moved.min(axis=1), moved.max(axis=1)
    xyxy = np.clip(np.concatenate([low, high], 1), 0, [width, height, width, height]).astype(np.float32)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return Detections(xyxy[keep], detections.confidence[keep], detections.class_id[keep])


def propagated_result(
    plan: Plan, keyframe: FrameResult, timings: dict[str, float], prediction: Prediction
) -> FrameResult:
    return FrameResult(plan.index, prediction, timings, keyframe.model_version, source="propagated")


# ---- what reuse saved ---------------------------------------------------------------------------------


@dataclass
class ReuseStats:
    frames: int = 0
    keyframes: int = 0  # frames the engine ran on
    reasons: Counter = field(default_factory=Counter)  # why each keyframe was one
    motion_seconds: float = 0.0  # estimating motion, every frame
    propagate_seconds: float = 0.0  # warping results, propagated frames

    def count(self, plan: Plan, motion_seconds: float) -> None:
        self.motion_seconds += motion_seconds
        if plan.keyframe:
            self.keyframes += 1
            self.reasons[plan.reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "engine_calls": self.keyframes,
            "propagated": self.frames - self.keyframes,
            "calls_saved": round(self.frames / self.keyframes, 3) if self.keyframes else None,
            "keyframe_reasons": dict(sorted(self.reasons.items())),
            "motion_ms_per_frame": round(1000 * self.motion_seconds / max(self.frames, 1), 3),
            "propagate_ms_per_frame": round(
                1000 * self.propagate_seconds / max(self.frames - self.keyframes, 1), 3
            ),
        }


# ---- video jobs: keyframes through Triton, the frames between them filled in ------------------------


@dataclass(eq=False)
class _Segment:
    """A keyframe and the propagated frames after it, up to the next keyframe."""

    keyframe: Plan
    followers: list[Plan] = field(default_factory=list)
    backward: list[Motion | None] = field(default_factory=list)  # next keyframe -> each follower
    motion_seconds: dict[int, float] = field(default_factory=dict)  # by frame index


class KeyframeReuse:
    """Wrap a ``TritonModelClient`` for a video job: only keyframes reach Triton.

    ``stream(frames)`` yields one ``FrameResult`` per frame, in order, like the client's own. Results
    of frames between keyframes wait for the next keyframe's result (it fills what came into view),
    so up to ``max_in_flight`` x ``max_interval`` frames are held.
    """

    def __init__(self, client: TritonModelClient, settings: ReuseSettings) -> None:
        self.client = client
        self.settings = settings
        self.stats = ReuseStats()

    async def stream(self, frames: AsyncIterable[np.ndarray]) -> AsyncIterator[FrameResult]:
        planner = KeyframePlanner(self.settings, Direction.JOB)
        to_infer: asyncio.Queue = asyncio.Queue(maxsize=1)  # keyframes, pulled as Triton has room
        segments: asyncio.Queue = asyncio.Queue()  # closed segments, in order (bounded by to_infer)
        done = object()

        async def plan_frames() -> None:
            try:
                await self._plan(frames, planner, to_infer, segments, done)
            except Exception as error:  # hand decode errors to the consumer, wherever it waits
                segments.put_nowait(error)
                await to_infer.put(error)

        async def keyframe_frames() -> AsyncIterator[np.ndarray]:
            while (item := await to_infer.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                yield item

        planning = asyncio.create_task(plan_frames())
        previous: tuple[_Segment, FrameResult] | None = None
        try:
            async for result in self.client.stream(keyframe_frames()):
                segment = await segments.get()
                if isinstance(segment, Exception):
                    raise segment
                if previous is not None:
                    for each in await asyncio.to_thread(self._fill, *previous, result):
                        yield each
                previous = segment, result
            if previous is not None:
                for each in await asyncio.to_thread(self._fill, *previous, None):
                    yield each
        finally:
            planning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await planning

    async def _plan(self, frames, planner: KeyframePlanner, to_infer, segments, done) -> None:
        segment: _Segment | None = None
        last_frame: np.ndarray | None = None
        async for frame in frames:
            plan, seconds = await asyncio.to_thread(_timed_plan, planner, frame)
            self.stats.frames += 1
            last_frame = frame
            if not plan.keyframe:
                segment.followers.append(plan)
                segment.motion_seconds[plan.index] = seconds
                self.stats.count(plan, seconds)
                continue
            segment = await self._next_segment(segment, plan, seconds, planner, segments)
            await to_infer.put(frame)
        if segment is not None and segment.followers and self._needs_closing_keyframe(segment, planner):
            # The video ends while frames still miss what came into view: infer its last frame.
            last = segment.followers.pop()
            self.stats.keyframes += 1
            self.stats.reasons["last_frame"] += 1
            closing = dataclasses.replace(last, keyframe=True, reason="last_frame", motion=None)
            segment = await self._next_segment(
                segment, closing, segment.motion_seconds[last.index], planner, segments
            )
            await to_infer.put(last_frame)
        if segment is not None:
            await segments.put(segment)
        await to_infer.put(done)

    async def _next_segment(
        self, segment: _Segment | None, keyframe: Plan, seconds: float, planner: KeyframePlanner, segments
    ) -> _Segment:
        """Close ``segment`` with the motion from ``keyframe`` back to its frames, open the next one."""
        if keyframe.reason != "last_frame":
            self.stats.count(keyframe, seconds)
        planner.adopt(keyframe)
        if segment is not None:
            started = time.perf_counter()
            estimate = planner.estimator.estimate
            segment.backward = await asyncio.to_thread(
                lambda: [estimate(keyframe.view, follower.view) for follower in segment.followers]
            )
            self.stats.motion_seconds += time.perf_counter() - started
            await segments.put(segment)
        next_segment = _Segment(keyframe)
        next_segment.motion_seconds[keyframe.index] = seconds
        return next_segment

    def _needs_closing_keyframe(self, segment: _Segment, planner: KeyframePlanner) -> bool:
        motion = segment.followers[-1].motion
        return (
            motion is not None
            and motion.uncovered > MAX_UNCOVERED[Direction.LIVE] * planner.settings.tolerance
        )

    def _fill(
        self, segment: _Segment, keyframe: FrameResult, following: FrameResult | None
    ) -> list[FrameResult]:
        """The segment's results: its keyframe's, then each follower's propagated (both ways)."""
        key_plan = segment.keyframe
        results = [
            dataclasses.replace(
                keyframe,
                frame_index=key_plan.index,
                timings=keyframe.timings | {"motion": segment.motion_seconds.get(key_plan.index, 0.0)},
            )
        ]
        for follower, backward in zip(
            segment.followers, segment.backward or [None] * len(segment.followers), strict=True
        ):
            started = time.perf_counter()
            prediction = carry_between(
                keyframe.prediction,
                follower,
                following.prediction if following is not None else None,
                backward,
                self.settings.tolerance,
            )
            seconds = time.perf_counter() - started
            self.stats.propagate_seconds += seconds
            timings = {"motion": segment.motion_seconds[follower.index], "propagate": seconds}
            results.append(propagated_result(follower, keyframe, timings, prediction))
        return results


def _timed_plan(planner: KeyframePlanner, frame: np.ndarray) -> tuple[Plan, float]:
    started = time.perf_counter()
    plan = planner.plan(frame)
    return plan, time.perf_counter() - started


# ---- live streams: forwards only, or waiting up to ``lookahead`` frames -----------------------------


class LiveReuse:
    """Temporal reuse for one live stream: a result is due when its frame arrives (forwards only), or
    with ``settings.lookahead`` up to that many frames later (filled from the next keyframe too).

    Per frame: ``plan = await reuse.plan(frame)``; a keyframe is inferred by the caller, who hands the
    request to ``adopt(plan, request)``; any other frame's result is ``await reuse.propagated(plan)``,
    which waits for its keyframe's result (and with lookahead for the next keyframe's; no engine call).
    A keyframe that fails is forgotten, so the next frame is inferred. With lookahead, ``close()`` at
    the end of the stream releases the frames still waiting for a next keyframe (carried forwards).
    """

    def __init__(self, settings: ReuseSettings) -> None:
        self.settings = settings
        self.planner = KeyframePlanner(*settings.for_live())
        self.stats = ReuseStats()
        self._keyframe: asyncio.Future | None = None  # the current keyframe's result
        # With lookahead: the next keyframe (its plan and result future), None if the stream ends first.
        self._following: asyncio.Future | None = None

    async def plan(self, frame: np.ndarray) -> Plan:
        plan, seconds = await asyncio.to_thread(_timed_plan, self.planner, frame)
        self.stats.frames += 1
        self.stats.motion_seconds += seconds
        return plan

    def adopt(self, plan: Plan, request: Awaitable[FrameResult]) -> asyncio.Future:
        """``plan``'s frame went to the engine as ``request``: later frames are carried from it."""
        future = asyncio.ensure_future(request)
        self.planner.adopt(plan)
        self.stats.keyframes += 1
        self.stats.reasons[plan.reason] += 1
        self._keyframe = future
        self._hand_on((plan, future))
        if self.settings.lookahead:
            self._following = asyncio.get_running_loop().create_future()

        def forget_if_failed(finished: asyncio.Future) -> None:
            if finished.cancelled() or finished.exception() is not None:
                self.planner.forget(plan.index)

        future.add_done_callback(forget_if_failed)
        return future

    def result(self, plan: Plan, infer: Callable[[], Awaitable[FrameResult]]) -> asyncio.Future:
        """``plan``'s result: ``infer()`` for a keyframe (adopted), else propagated from the keyframe."""
        return self.adopt(plan, infer()) if plan.keyframe else self.propagated(plan)

    def skipped(self, plan: Plan) -> None:
        """A keyframe could not be sent (the engine's window was full): it is not counted."""
        self.stats.frames -= 1

    def propagated(self, plan: Plan) -> asyncio.Future:
        """The result of a non-keyframe, once its keyframe's result (and the next one's) is in."""
        if plan.keyframe or self._keyframe is None:
            raise ValueError(f"frame {plan.index} is a keyframe: infer it")
        return asyncio.ensure_future(self._propagate(plan, self._keyframe, self._following))

    def close(self) -> None:
        """The stream ended: frames waiting for a next keyframe are carried forwards only."""
        self._hand_on(None)

    def _hand_on(self, following: tuple[Plan, asyncio.Future] | None) -> None:
        if self._following is not None and not self._following.done():
            self._following.set_result(following)

    async def _propagate(
        self, plan: Plan, keyframe: asyncio.Future, following: asyncio.Future | None
    ) -> FrameResult:
        result: FrameResult = await asyncio.shield(keyframe)
        next_keyframe = None
        if following is not None and (found := await asyncio.shield(following)) is not None:
            next_plan, next_result = found
            with contextlib.suppress(Exception):  # the next keyframe failed: forwards only
                next_keyframe = next_plan, (await asyncio.shield(next_result)).prediction
        started = time.perf_counter()
        prediction = carry_live(result.prediction, plan, next_keyframe, self.settings.tolerance)
        seconds = time.perf_counter() - started
        self.stats.propagate_seconds += seconds
        return propagated_result(plan, result, {"propagate": seconds}, prediction)
