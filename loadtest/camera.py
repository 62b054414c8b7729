"""A camera stream: frames at a fixed rate with a bounded window of requests in flight.

A real camera does not wait for the server. When a frame's tick comes and the window is full, the
frame is dropped and counted: overload shows up as drops and lower achieved FPS, never as an
unbounded queue of stale frames. Runs on gevent (Locust's concurrency model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gevent
import gevent.pool
import numpy as np

ResultCallback = Callable[[float, Exception | None], None]  # (latency seconds, error)


@dataclass
class CameraCounters:
    sent: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    latencies_s: list[float] = field(default_factory=list)


class CameraStream:
    def __init__(
        self,
        infer: Callable[[np.ndarray], object],
        frames: Sequence[np.ndarray],
        fps: float = 30.0,
        window: int = 2,
        on_result: ResultCallback | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if fps <= 0 or window < 1 or not frames:
            raise ValueError("a camera needs fps > 0, window >= 1 and at least one frame")
        self.infer, self.frames, self.fps, self.window = infer, frames, fps, window
        self.on_result, self.on_drop = on_result, on_drop
        self.counters = CameraCounters()
        self._in_flight = gevent.pool.Pool(window)

    def run(
        self, duration_s: float | None = None, should_stop: Callable[[], bool] = lambda: False
    ) -> CameraCounters:
        """Stream until ``duration_s`` passes or ``should_stop()``; in-flight frames are awaited."""
        interval = 1.0 / self.fps
        started = next_tick = time.monotonic()
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
                if self._in_flight.full():
                    self._drop()
                else:
                    frame = self.frames[self.counters.sent % len(self.frames)]
                    self.counters.sent += 1
                    self._in_flight.spawn(self._send, frame)
            self._in_flight.join()
        finally:
            self._in_flight.kill(block=False)
        return self.counters

    def _drop(self) -> None:
        self.counters.dropped += 1
        if self.on_drop:
            self.on_drop()

    def _send(self, frame: np.ndarray) -> None:
        started = time.perf_counter()
        error: Exception | None = None
        try:
            self.infer(frame)
            self.counters.completed += 1
        except Exception as caught:  # reported to Locust as a failure, the stream goes on
            error = caught
            self.counters.failed += 1
        latency = time.perf_counter() - started
        if error is None:
            self.counters.latencies_s.append(latency)
        if self.on_result:
            self.on_result(latency, error)
