"""``prodseg stream``: a camera (or a video file played as one) to Triton over gRPC, live.

Frames are sent at the target FPS with a bounded window; frames that find the window full are
dropped and counted. The annotated stream, with the achieved FPS drawn on it, is written to a video.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np

from clients.contract import ModelContract
from clients.live import StreamStats, camera_frames, stream_live
from clients.overlay import Annotator
from clients.results import FrameResult
from clients.triton_client import TritonModelClient
from clients.video import FPSMonitor, VideoSink


def run_stream(
    contract: ModelContract,
    source: str,
    triton: str,
    fps: float,
    window: int,
    output: Path | None,
    max_frames: int | None,
) -> StreamStats:
    frames = camera_frames(source, max_frames)  # fails at once if the source cannot be opened
    annotate = Annotator(contract)
    meter = FPSMonitor(window=int(fps) or 1)

    async def run(sink: VideoSink | None) -> StreamStats:
        async with TritonModelClient(triton, contract, max_in_flight=window) as client:
            if not await client.is_ready():
                raise ConnectionError(f"Triton at {triton} is not ready for {contract.model_name}")

            def show(frame: np.ndarray, result: FrameResult, latency_s: float) -> None:
                meter.tick()
                if sink is not None:
                    picture = annotate(frame, result.prediction)
                    text = f"{meter.fps:5.1f} FPS  {latency_s * 1000:5.1f} ms"
                    cv2.putText(
                        picture,
                        text,
                        (8, picture.shape[0] - 10),
                        cv2.FONT_HERSHEY_SIMPLEX,
                        0.6,
                        (255, 255, 255),
                        2,
                        cv2.LINE_AA,
                    )
                    sink.write(picture)

            return await stream_live(client, frames, fps, window, show)

    if output is None:
        return asyncio.run(run(None))
    with VideoSink(output, fps=fps) as sink:
        return asyncio.run(run(sink))
