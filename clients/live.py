"""Live streams: frames arrive at a camera's rate; a bounded window of requests is in flight.

A camera does not wait for the server. When a frame arrives and the window is full, the frame is
dropped and counted: overload shows as drops and a lower achieved FPS, never as a growing queue of
stale frames. A frame that fails (Triton refuses it, a corrupt frame) is counted and the stream goes
on. Results come back in frame order with their latency.
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
from clients.triton_client import TritonModelClient

ResultHandler = Callable[[np.ndarray, FrameResult, float], None]  # (frame, result, latency seconds)


@dataclass
class StreamStats:
    captured: int = 0
    sent: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def achieved_fps(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        latencies = np.array(self.latencies_s) * 1000 if self.latencies_s else np.zeros(1)
        return {
            "captured": self.captured,
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "achieved_fps": round(self.achieved_fps, 2),
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
            "errors": self.errors[:10],
        }


async def stream_live(
    client: TritonModelClient,
    frames: Iterable[np.ndarray],
    fps: float,
    window: int = 2,
    on_result: ResultHandler | None = None,
    paced: bool = True,
) -> StreamStats:
    """Send ``frames`` at ``fps`` (``paced``: a file played as a camera) with at most ``window`` in flight."""
    if fps <= 0 or window < 1:
        raise ValueError("a live stream needs fps > 0 and window >= 1")
    stats, interval = StreamStats(), 1.0 / fps
    in_flight: deque[tuple[np.ndarray, asyncio.Task, float]] = deque()
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
            if len(in_flight) >= window:
                stats.dropped += 1
                continue
            stats.sent += 1
            task = asyncio.ensure_future(client.predict_image(frame))
            in_flight.append((frame, task, time.monotonic()))
            await asyncio.sleep(0)  # let the request start before the next frame's tick
        while in_flight:
            await finish_oldest()
    finally:
        for _, task, _ in in_flight:
            task.cancel()
    stats.seconds = time.monotonic() - started
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
