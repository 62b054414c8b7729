"""``prodseg stream``: a camera (or a video file played as one) to Triton over gRPC, live.

Frames are sent at the target FPS with a bounded window; frames that find the window full are
dropped and counted. ``--wire jpeg`` sends them as JPEG (``clients/wire.py``): a tenth of the bytes.
The annotated stream, with the achieved FPS drawn on it, is written to a video.
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
from clients.temporal import REUSE_OFF, ReuseSettings
from clients.triton_client import TritonModelClient
from clients.video import FPSMonitor, VideoSink
from clients.wire import DEFAULT_JPEG_QUALITY, Wire


def run_stream(
    contract: ModelContract,
    source: str,
    triton: str,
    fps: float,
    window: int,
    output: Path | None,
    max_frames: int | None,
    reuse: ReuseSettings = REUSE_OFF,
    wire: Wire = Wire.RAW,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> StreamStats:
    frames = camera_frames(source, max_frames)  # fails at once if the source cannot be opened
    annotate = Annotator(contract)
    meter = FPSMonitor(window=int(fps) or 1)

    async def run(sink: VideoSink | None) -> StreamStats:
        async with TritonModelClient(
            triton, contract, max_in_flight=window, wire=wire, jpeg_quality=jpeg_quality
        ) as client:
            if not await client.is_ready():
                served = f"{contract.model_name}_jpeg" if wire == Wire.JPEG else contract.model_name
                raise ConnectionError(f"Triton at {triton} is not ready for {served}")

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

            return await stream_live(client, frames, fps, window, show, reuse=reuse)

    if output is None:
        return asyncio.run(run(None))
    with VideoSink(output, fps=fps) as sink:
        return asyncio.run(run(sink))
