"""A camera stream: frames at a fixed rate with a bounded window of requests in flight.

A real camera does not wait for the server. When a frame's tick comes and the window is full, the
frame is dropped and counted: overload shows up as drops and lower achieved FPS, never as an
unbounded queue of stale frames. Runs on gevent (Locust's concurrency model).

With temporal reuse (``CameraReuse``, the SDK's ``clients.temporal`` planner, forwards only) only
keyframes are requests; every other frame is answered by carrying the keyframe's result along the
camera's motion, on the camera's own CPU, and never waits for the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import gevent
import gevent.event
import gevent.pool
import numpy as np

from clients.results import Prediction
from clients.temporal import Direction, KeyframePlanner, Plan, ReuseSettings, propagate

ResultCallback = Callable[[float, Exception | None], None]  # (latency seconds, error)


class Reply(NamedTuple):
    """What ``infer(frame)`` may return: its request's bytes, and the prediction reuse carries on."""

    bytes_sent: int
    bytes_received: int
    prediction: Prediction | None = None


Infer = Callable[[np.ndarray], Reply | tuple[int, int] | None]


@dataclass
class CameraCounters:
    sent: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    latencies_s: list[float] = field(default_factory=list)
    bytes_sent: int = 0  # tensor bytes of completed frames, when ``infer`` reports them
    bytes_received: int = 0
    propagated: int = 0  # completed frames answered by temporal reuse, with no request


class CameraReuse:
    """Temporal reuse for one camera: plans each frame against the current keyframe, carries the
    keyframe's result to the frames it still serves (waiting for it if it is in flight)."""

    def __init__(self, settings: ReuseSettings, views: Sequence[np.ndarray]) -> None:
        self.planner = KeyframePlanner(settings, Direction.LIVE)
        self.views = views  # the camera's RGB frames, index-aligned with the payloads it sends
        self._keyframe: gevent.event.AsyncResult | None = None

    def plan(self, index: int) -> Plan:
        return self.planner.plan(self.views[index % len(self.views)])

    def can_carry(self, plan: Plan) -> bool:
        return not plan.keyframe and self._keyframe is not None

    def sending(self, plan: Plan) -> gevent.event.AsyncResult:
        """``plan``'s frame goes to the engine: the frames after it are carried from its result."""
        self.planner.adopt(plan)
        self._keyframe = gevent.event.AsyncResult()
        return self._keyframe

    def failed(self, plan: Plan) -> None:
        self.planner.forget(plan.index)  # the next frame becomes a keyframe

    def carry(self, plan: Plan) -> Prediction:
        keyframe = self._keyframe.get()  # raises the keyframe's error if it failed
        return propagate(keyframe, plan.motion, plan.view.height, plan.view.width)


class CameraStream:
    def __init__(
        self,
        infer: Infer,
        frames: Sequence[np.ndarray],
        fps: float = 30.0,
        window: int = 2,
        on_result: ResultCallback | None = None,
        on_drop: Callable[[], None] | None = None,
        reuse: CameraReuse | None = None,
        on_carried: ResultCallback | None = None,
    ) -> None:
        if fps <= 0 or window < 1 or not frames:
            raise ValueError("a camera needs fps > 0, window >= 1 and at least one frame")
        self.infer, self.frames, self.fps, self.window = infer, frames, fps, window
        self.on_result, self.on_drop, self.reuse = on_result, on_drop, reuse
        self.on_carried = on_carried or on_result  # frames answered by reuse: not requests
        self.counters = CameraCounters()
        self._in_flight = gevent.pool.Pool(window)
        self._carried = gevent.pool.Group()  # propagated frames waiting for their keyframe

    def run(
        self, duration_s: float | None = None, should_stop: Callable[[], bool] = lambda: False
    ) -> CameraCounters:
        """Stream until ``duration_s`` passes or ``should_stop()``; in-flight frames are awaited."""
        interval = 1.0 / self.fps
        started = next_tick = time.monotonic()
        produced = 0  # frames the camera has produced (sent, carried or dropped)
        try:
            while (duration_s is None or time.monotonic() - started < duration_s) and not should_stop():
                now = time.monotonic()
                if now < next_tick:
                    gevent.sleep(next_tick - now)
                    continue
                # Ticks that passed while this greenlet was starved are frames the camera produced
                # and nobody sent: they are drops too.
                missed = int((now - next_tick) / interval)
                for _ in range(missed):
                    self._drop()
                next_tick += (missed + 1) * interval
                index, produced = produced, produced + 1
                plan = self.reuse.plan(index) if self.reuse is not None else None
                if plan is not None and self.reuse.can_carry(plan):
                    self._carried.spawn(self._carry, plan)
                elif self._in_flight.full():
                    self._drop()
                else:
                    self.counters.sent += 1
                    keyframe = self.reuse.sending(plan) if plan is not None else None
                    self._in_flight.spawn(self._send, self.frames[index % len(self.frames)], plan, keyframe)
            self._in_flight.join()
            self._carried.join()
        finally:
            self._in_flight.kill(block=False)
            self._carried.kill(block=False)
        return self.counters

    def _drop(self) -> None:
        self.counters.dropped += 1
        if self.on_drop:
            self.on_drop()

    def _send(
        self, frame: np.ndarray, plan: Plan | None = None, keyframe: gevent.event.AsyncResult | None = None
    ) -> None:
        started = time.perf_counter()
        error: Exception | None = None
        try:
            reply = self.infer(frame)
            self.counters.completed += 1
            if reply is not None:
                self.counters.bytes_sent += reply[0]
                self.counters.bytes_received += reply[1]
            if keyframe is not None:
                keyframe.set(reply[2] if reply is not None and len(reply) > 2 else None)
        except Exception as caught:  # reported to Locust as a failure, the stream goes on
            error = caught
            self.counters.failed += 1
            if keyframe is not None:
                self.reuse.failed(plan)
                keyframe.set_exception(caught)
        self._finish(time.perf_counter() - started, error)

    def _carry(self, plan: Plan) -> None:
        started = time.perf_counter()
        error: Exception | None = None
        try:
            self.reuse.carry(plan)
            self.counters.completed += 1
            self.counters.propagated += 1
        except Exception as caught:  # its keyframe failed: so does this frame
            error = caught
            self.counters.failed += 1
        self._finish(time.perf_counter() - started, error, self.on_carried)

    def _finish(self, latency: float, error: Exception | None, report: ResultCallback | None = None) -> None:
        if error is None:
            self.counters.latencies_s.append(latency)
        if report := report or self.on_result:
            report(latency, error)
