"""Per-step statistics of a load run: achieved FPS per camera, drops, latency percentiles.

A sampler greenlet measures every camera's completed frames once a second, so a step's FPS
figures are per-user, per-second rates (p5 is what the slowest cameras got), not a global average.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import gevent
import numpy as np

SAMPLE_S = 1.0


@dataclass
class StepStats:
    users: int
    fps_samples: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    dropped: int = 0

    def summary(self, seconds: float) -> dict:
        offered = self.completed + self.failed + self.dropped
        latencies_ms = np.array(self.latencies_s) * 1000
        percentile = lambda q: round(float(np.percentile(latencies_ms, q)), 2) if len(latencies_ms) else None  # noqa: E731
        fps = np.array(self.fps_samples)
        return {
            "users": self.users,
            "fps_per_user_p5": round(float(np.percentile(fps, 5)), 2) if len(fps) else None,
            "fps_per_user_median": round(float(np.median(fps)), 2) if len(fps) else None,
            "frames_per_s_total": round(self.completed / seconds, 2) if seconds else None,
            "completed": self.completed,
            "failed": self.failed,
            "dropped": self.dropped,
            "drop_rate": round(self.dropped / offered, 4) if offered else None,
            "latency_ms_p50": percentile(50),
            "latency_ms_p95": percentile(95),
            "latency_ms_p99": percentile(99),
        }


class RunRecorder:
    def __init__(self) -> None:
        self.environment = None
        self.steps: list[StepStats] = []
        self.step_seconds = 0.0
        self.started = 0.0
        self.triton_before = None
        self._cameras: dict[int, int] = {}  # id(user) -> frames completed since the last sample
        self.drop_times: list[float] = []  # wall clock of every dropped frame (for time windows)
        self._sampler: gevent.Greenlet | None = None

    def attach(self, environment) -> None:
        self.environment = environment

    def start(self, users_per_step: list[int], step_seconds: float) -> None:
        self.steps = [StepStats(users) for users in users_per_step]
        self.step_seconds = step_seconds
        self.started = time.monotonic()
        self._sampler = gevent.spawn(self._sample_forever)

    def _step(self) -> StepStats | None:
        index = int((time.monotonic() - self.started) // self.step_seconds)
        return self.steps[index] if 0 <= index < len(self.steps) else None

    def _settled(self) -> bool:
        """True once the current step has run long enough for its users to have ramped."""
        into_step = (time.monotonic() - self.started) % self.step_seconds
        return into_step >= min(2.0, 0.2 * self.step_seconds)

    def add_camera(self, user) -> None:
        self._cameras[id(user)] = 0

    def remove_camera(self, user) -> None:
        self._cameras.pop(id(user), None)

    def completed(self, user, latency_s: float, error: Exception | None) -> None:
        step = self._step()
        if step is None:
            return
        if error is None:
            step.completed += 1
            step.latencies_s.append(latency_s)
            if id(user) in self._cameras:
                self._cameras[id(user)] += 1
        else:
            step.failed += 1

    def dropped(self, user) -> None:
        self.drop_times.append(time.time())
        if (step := self._step()) is not None:
            step.dropped += 1

    def _sample_forever(self) -> None:
        while True:
            gevent.sleep(SAMPLE_S)
            step = self._step()
            if step is None or not self._settled():
                self._cameras = dict.fromkeys(self._cameras, 0)
                continue
            step.fps_samples.extend(count / SAMPLE_S for count in self._cameras.values())
            self._cameras = dict.fromkeys(self._cameras, 0)

    def report(self, camera_fps: float, camera_window: int, triton: dict | None) -> dict:
        if self._sampler is not None:
            self._sampler.kill(block=False)
        steps = [step.summary(self.step_seconds) for step in self.steps]
        sustained = [s["users"] for s in steps if _sustains(s, camera_fps)]
        within_budget = [s["users"] for s in steps if _within_drop_budget(s)]
        return {
            "camera_fps_target": camera_fps,
            "camera_window": camera_window,
            "step_seconds": self.step_seconds,
            "steps": steps,
            "users_sustained_at_target": max(sustained, default=0),
            "users_within_drop_budget": max(within_budget, default=0),
            "triton": triton,
            "errors": _errors_by_name(self.environment),
        }


def _sustains(step: dict, target_fps: float) -> bool:
    """A step is sustained when even the slowest cameras (p5) get 95% of the target and drops stay < 1%."""
    return (
        step["fps_per_user_p5"] is not None
        and step["fps_per_user_p5"] >= 0.95 * target_fps
        and (step["drop_rate"] or 0) < 0.01
        and step["failed"] == 0
    )


def _within_drop_budget(step: dict) -> bool:
    """The load-test target as issues state it: cameras at their FPS with <= 1% of frames dropped and
    none failed. Looser than ``_sustains``: a second in which a camera's frames arrive late (carried
    frames wait for their keyframe) counts against p5, not here."""
    return step["drop_rate"] is not None and step["drop_rate"] <= 0.01 and step["failed"] == 0


def _errors_by_name(environment) -> dict[str, int]:
    errors: dict[str, int] = defaultdict(int)
    if environment is not None:
        for error in environment.stats.errors.values():
            errors[f"{error.method} {error.name}: {error.error}"] += error.occurrences
    return dict(errors)
