"""Live streams: frames arrive at a camera's rate; a bounded window of requests is in flight.

A camera does not wait for the server. When a frame arrives and the window is full, the frame is
dropped and counted: overload shows as drops and a lower achieved FPS, never as a growing queue of
stale frames. A frame that fails (Triton refuses it, a corrupt frame) is counted and the stream goes
on. Results come back in frame order with their latency.

With temporal reuse (``reuse``, ``clients.temporal.LiveReuse``) only keyframes are sent; the frames
between get their keyframe's result carried along the camera's motion. Such a frame costs no Triton
call, so it is never dropped for a full window: only keyframes count against it. With a
``lookahead`` (frames), such a result also waits for the next keyframe, which fills what came into
view: fewer keyframes for the same quality, results up to ``lookahead`` frame intervals late (the
latencies say so).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from clients.results import FrameResult
from clients.temporal import REUSE_OFF, LiveReuse, ReuseSettings
from clients.triton_client import TritonModelClient

ResultHandler = Callable[[np.ndarray, FrameResult, float], None]  # (frame, result, latency seconds)


@dataclass
class StreamStats:
    captured: int = 0
    sent: int = 0  # frames sent to Triton: the engine calls
    propagated: int = 0  # frames given their keyframe's result moved along (temporal reuse)
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reuse: dict | None = None  # temporal reuse's figures (clients.temporal.ReuseStats), when on

    @property
    def achieved_fps(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        latencies = np.array(self.latencies_s) * 1000 if self.latencies_s else np.zeros(1)
        return {
            "captured": self.captured,
            "sent": self.sent,
            "engine_calls": self.sent,
            "propagated": self.propagated,
            "completed": self.completed,
            "failed": self.failed,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "achieved_fps": round(self.achieved_fps, 2),
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
            "errors": self.errors[:10],
        } | ({"reuse": self.reuse} if self.reuse is not None else {})


async def stream_live(
    client: TritonModelClient,
    frames: Iterable[np.ndarray],
    fps: float,
    window: int = 2,
    on_result: ResultHandler | None = None,
    paced: bool = True,
    reuse: ReuseSettings = REUSE_OFF,
) -> StreamStats:
    """Send ``frames`` at ``fps`` (``paced``: a file played as a camera) with at most ``window`` in flight."""
    if fps <= 0 or window < 1:
        raise ValueError("a live stream needs fps > 0 and window >= 1")
    stats, interval = StreamStats(), 1.0 / fps
    in_flight: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()
    engine_requests: set[asyncio.Future] = set()  # what counts against the window
    temporal = LiveReuse(reuse) if reuse.enabled else None
    started = next_tick = time.monotonic()

    async def finish_oldest() -> None:
        frame, task, sent_at = in_flight.popleft()
        try:
            result = await task
        except Exception as error:  # this frame failed; the stream goes on
            stats.failed += 1
            stats.errors.append(f"frame {stats.captured}: {error}")
            return
        latency = time.monotonic() - sent_at
        stats.completed += 1
        stats.latencies_s.append(latency)
        if on_result:
            on_result(frame, result, latency)

    try:
        for frame in frames:
            if paced:
                delay = next_tick - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_tick = max(next_tick + interval, time.monotonic() - interval)
            stats.captured += 1
            while in_flight and in_flight[0][1].done():
                await finish_oldest()
            arrived = time.monotonic()
            plan = await temporal.plan(frame) if temporal else None
            if plan is not None and not plan.keyframe:
                stats.propagated += 1
                in_flight.append((frame, temporal.propagated(plan), arrived))
                continue
            if len(engine_requests) >= window:
                stats.dropped += 1
                if plan is not None:
                    temporal.skipped(plan)
                continue
            stats.sent += 1
            task = asyncio.ensure_future(client.predict_image(frame))
            if plan is not None:
                task = temporal.adopt(plan, task)
            engine_requests.add(task)
            task.add_done_callback(engine_requests.discard)
            in_flight.append((frame, task, arrived))
            await asyncio.sleep(0)  # let the request start before the next frame's tick
        if temporal is not None:
            temporal.close()  # frames waiting for a next keyframe get their result now
        while in_flight:
            await finish_oldest()
    finally:
        for _, task, _ in in_flight:
            task.cancel()
    stats.seconds = time.monotonic() - started
    if temporal is not None:
        stats.reuse = temporal.stats.to_dict()
    return stats


def camera_frames(source: str, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames from a camera (an index such as ``0`` or ``/dev/video0``) or a video file.

    Opens the source at once (a ``ValueError`` if it cannot), then yields frames lazily.
    """
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise ValueError(f"cannot open camera or video {source!r}")
    return _read(capture, max_frames)


def _read(capture: cv2.VideoCapture, max_frames: int | None) -> Iterator[np.ndarray]:
    try:
        count = 0
        while max_frames is None or count < max_frames:
            ok, bgr = capture.read()
            if not ok:
                return
            count += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
