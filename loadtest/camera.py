"""A camera stream: frames at a fixed rate with a bounded window of requests in flight.

A real camera does not wait for the server. When a frame's tick comes and the window is full, the
frame is dropped and counted: overload shows up as drops and lower achieved FPS, never as an
unbounded queue of stale frames. Runs on gevent (Locust's concurrency model); when the camera's own
greenlet runs late (the load generator's CPU), frames wait in a small capture buffer as they would in
a camera, and only those that overflow it are dropped (``dropped_late``).

With temporal reuse (``CameraReuse``, the SDK's ``clients.temporal`` planner and carrying) only
keyframes are requests; every other frame is answered by carrying the keyframe's result along the
camera's motion, on the camera's own CPU, and never waits for the window. Forwards only by default;
with a ``lookahead`` a carried frame also waits for the next keyframe, which fills what came into
view (as ``clients.temporal.LiveReuse`` does), and its latency includes that wait.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import gevent
import gevent.event
import gevent.pool
import numpy as np

from clients.results import Prediction
from clients.temporal import KeyframePlanner, Plan, ReuseSettings, carry_live

ResultCallback = Callable[[float, Exception | None], None]  # (latency seconds, error)
# Frames a camera keeps while its sender is busy (V4L2 drivers and OpenCV's capture keep a few);
# a frame that waited there still goes out, late, and its latency counts from its capture.
CAPTURE_BUFFER = 2


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
    # Of the dropped: frames overwritten in the capture buffer while the camera's own greenlet
    # waited for the CPU (the load generator's doing; the rest found the server's window full).
    dropped_late: int = 0
    buffered: int = 0  # frames handled late from the capture buffer (their latency counts from capture)
    latencies_s: list[float] = field(default_factory=list)
    bytes_sent: int = 0  # tensor bytes of completed frames, when ``infer`` reports them
    bytes_received: int = 0
    propagated: int = 0  # completed frames answered by temporal reuse, with no request


class CameraReuse:
    """Temporal reuse for one camera: plans each frame against the current keyframe, carries the
    keyframe's result to the frames it still serves (waiting for it if it is in flight, and with a
    lookahead for the next keyframe's too)."""

    def __init__(self, settings: ReuseSettings, views: Sequence[np.ndarray]) -> None:
        self.settings = settings
        self.planner = KeyframePlanner(*settings.for_live())
        self.views = views  # the camera's RGB frames, index-aligned with the payloads it sends
        self._keyframe: gevent.event.AsyncResult | None = None
        # With lookahead: set to (plan, result) of the next keyframe, or None when the stream ends first.
        self._following: gevent.event.AsyncResult | None = None

    def plan(self, index: int) -> Plan:
        return self.planner.plan(self.views[index % len(self.views)])

    def can_carry(self, plan: Plan) -> bool:
        return not plan.keyframe and self._keyframe is not None

    def sending(self, plan: Plan) -> gevent.event.AsyncResult:
        """``plan``'s frame goes to the engine: the frames after it are carried from its result."""
        self.planner.adopt(plan)
        keyframe = gevent.event.AsyncResult()
        self._hand_on((plan, keyframe))
        self._keyframe = keyframe
        self._following = gevent.event.AsyncResult() if self.settings.lookahead else None
        return keyframe

    def failed(self, plan: Plan) -> None:
        self.planner.forget(plan.index)  # the next frame becomes a keyframe

    def close(self) -> None:
        """The camera stops: frames waiting for a next keyframe are carried forwards only."""
        self._hand_on(None)

    def carrier(self, plan: Plan) -> Callable[[], Prediction]:
        """``plan``'s result to come, bound to the keyframe(s) current now (call it in a greenlet)."""
        keyframe, following = self._keyframe, self._following
        return lambda: self._carry(plan, keyframe, following)

    def _hand_on(self, following: tuple[Plan, gevent.event.AsyncResult] | None) -> None:
        if self._following is not None and not self._following.ready():
            self._following.set(following)

    def _carry(
        self,
        plan: Plan,
        keyframe: gevent.event.AsyncResult,
        following: gevent.event.AsyncResult | None,
    ) -> Prediction:
        previous = keyframe.get()  # raises the keyframe's error if it failed
        next_keyframe = None
        if following is not None and (found := following.get()) is not None:
            next_plan, next_result = found
            with contextlib.suppress(Exception):  # the next keyframe failed: forwards only
                next_keyframe = next_plan, next_result.get()
        return carry_live(previous, plan, next_keyframe, self.settings.tolerance)


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
                # Every tick that came is a frame. While this greenlet waited for the CPU, a real
                # camera's capture buffer kept the last CAPTURE_BUFFER frames; older ones were
                # overwritten: drops, counted as late (the client's doing, not the server's).
                ticks = int((now - next_tick) / interval) + 1
                overwritten = max(0, ticks - 1 - CAPTURE_BUFFER)
                self.counters.dropped_late += overwritten
                self.counters.buffered += ticks - 1 - overwritten
                for _ in range(overwritten):
                    self._drop()
                for tick in range(overwritten, ticks):
                    self._produce(produced + tick, next_tick + tick * interval, interval)
                produced += ticks
                next_tick += ticks * interval
            self._in_flight.join()
            if self.reuse is not None:
                self.reuse.close()  # carried frames waiting for a next keyframe get their result now
            self._carried.join()
        finally:
            self._in_flight.kill(block=False)
            self._carried.kill(block=False)
        return self.counters

    def _produce(self, index: int, captured: float, interval: float) -> None:
        """Frame ``index``, captured at ``captured`` (monotonic): carried, sent, or dropped."""
        plan = self.reuse.plan(index) if self.reuse is not None else None
        if plan is not None and self.reuse.can_carry(plan):
            # With a lookahead each frame is shown a fixed delay after its capture (a player
            # buffering that many frames): carried frames are warped then, one per tick, not all
            # at once when their next keyframe's result arrives.
            due = captured + self.reuse.settings.lookahead * interval
            self._carried.spawn(self._carry, self.reuse.carrier(plan), captured, due)
        elif self._in_flight.full():
            self._drop()
        else:
            self.counters.sent += 1
            keyframe = self.reuse.sending(plan) if plan is not None else None
            frame = self.frames[index % len(self.frames)]
            self._in_flight.spawn(self._send, frame, captured, plan, keyframe)

    def _drop(self) -> None:
        self.counters.dropped += 1
        if self.on_drop:
            self.on_drop()

    def _send(
        self,
        frame: np.ndarray,
        captured: float,
        plan: Plan | None = None,
        keyframe: gevent.event.AsyncResult | None = None,
    ) -> None:
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
        self._finish(time.monotonic() - captured, error)

    def _carry(self, carry: Callable[[], Prediction], captured: float, due: float) -> None:
        error: Exception | None = None
        try:
            gevent.sleep(max(0.0, due - time.monotonic()))
            carry()
            self.counters.completed += 1
            self.counters.propagated += 1
        except Exception as caught:  # its keyframe failed: so does this frame
            error = caught
            self.counters.failed += 1
        self._finish(time.monotonic() - captured, error, self.on_carried)

    def _finish(self, latency: float, error: Exception | None, report: ResultCallback | None = None) -> None:
        if error is None:
            self.counters.latencies_s.append(latency)
        if report := report or self.on_result:
            report(latency, error)
