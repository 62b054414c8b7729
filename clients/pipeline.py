"""The video job: decode -> segment on Triton -> overlay -> encode, with the stages overlapping.

Decoding and encoding run in worker threads (PyAV and OpenCV release the GIL) a chunk of frames at a
time, while the event loop keeps several requests in flight to Triton. Bounded queues between the
stages keep memory flat: a slow stage pushes back instead of piling up frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.masks import MaskArchiveWriter
from clients.overlay import OverlayPainter
from clients.result import FrameResult
from clients.triton_client import TritonSegmenter
from clients.video import VideoSink, probe, read_chunks

StageObserver = Callable[[str, float, int], None]  # (stage, seconds, frames)


@dataclass
class VideoJobStats:
    frames: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


async def segment_video(
    input_path: Path,
    overlay_path: Path,
    masks_path: Path | None,
    segmenter: TritonSegmenter,
    chunk_size: int = 8,
    alpha: float = 0.45,
    on_progress: Callable[[int], None] | None = None,
    observe: StageObserver | None = None,
) -> VideoJobStats:
    """Segment a whole video; outputs appear atomically, and only if every frame succeeded."""
    info = probe(input_path)
    painter = OverlayPainter(segmenter.contract.labels, alpha)
    stats = VideoJobStats()

    def record(stage: str, seconds: float, frames: int) -> None:
        stats.stage_seconds[stage] = stats.stage_seconds.get(stage, 0.0) + seconds
        if observe:
            observe(stage, seconds, frames)

    started = time.perf_counter()
    originals: dict[int, np.ndarray] = {}  # frames in flight, kept for drawing their overlay
    chunks = _decode_ahead(read_chunks(input_path, chunk_size), record)

    async def frames_to_segment() -> AsyncIterator[np.ndarray]:
        index = 0
        async for chunk in chunks:
            for frame in chunk:
                originals[index] = frame
                index += 1
                yield frame

    with VideoSink(overlay_path, fps=info.fps) as sink, _optional_masks(masks_path) as masks:
        writer = _ChunkWriter(sink, masks, painter, record)
        pending: list[tuple[np.ndarray, FrameResult]] = []
        try:
            async for result in segmenter.segment(frames_to_segment()):
                record("infer", result.timings["infer"] / segmenter.frames_per_request, 1)
                pending.append((originals.pop(result.frame_index), result))
                if len(pending) == chunk_size:
                    await writer.submit(pending)
                    stats.frames += len(pending)
                    pending = []
                    if on_progress:
                        on_progress(stats.frames)
            if pending:
                await writer.submit(pending)
                stats.frames += len(pending)
        finally:
            await writer.finish()  # never close the files under a thread still writing them
    stats.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(stats.frames)
    return stats


async def _decode_ahead(
    chunks: Iterator[list[np.ndarray]], record: StageObserver, depth: int = 2
) -> AsyncIterator[list[np.ndarray]]:
    """Decode up to ``depth`` chunks ahead of the consumer, in a worker thread."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=depth)
    done = object()

    def next_chunk():
        started = time.perf_counter()
        chunk = next(chunks, done)
        if chunk is not done:
            record("decode", time.perf_counter() - started, len(chunk))
        return chunk

    async def produce() -> None:
        try:
            while (chunk := await asyncio.to_thread(next_chunk)) is not done:
                await queue.put(chunk)
            await queue.put(done)
        except Exception as error:  # hand decode errors to the consumer
            await queue.put(error)

    producer = asyncio.create_task(produce())
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


class _ChunkWriter:
    """Overlay + encode one chunk at a time in a worker thread, overlapping with inference."""

    def __init__(self, sink: VideoSink, masks: MaskArchiveWriter | None, painter, record) -> None:
        self._sink, self._masks, self._painter, self._record = sink, masks, painter, record
        self._previous: asyncio.Future | None = None

    async def submit(self, chunk: list[tuple[np.ndarray, FrameResult]]) -> None:
        if self._previous is not None:  # at most one chunk being written: bounded memory, frame order kept
            await self._previous
        self._previous = asyncio.ensure_future(asyncio.to_thread(self._write, chunk))

    async def finish(self) -> None:
        if self._previous is not None:
            previous, self._previous = self._previous, None
            await previous

    def _write(self, chunk: list[tuple[np.ndarray, FrameResult]]) -> None:
        started = time.perf_counter()
        blended = [self._painter(frame, result.mask) for frame, result in chunk]
        overlay_done = time.perf_counter()
        self._record("overlay", overlay_done - started, len(chunk))
        for frame in blended:
            self._sink.write(frame)
        if self._masks is not None:
            for _, result in chunk:
                self._masks.write(result.mask)
        self._record("encode", time.perf_counter() - overlay_done, len(chunk))


class _optional_masks:
    def __init__(self, path: Path | None) -> None:
        self._writer = MaskArchiveWriter(path) if path else None

    def __enter__(self) -> MaskArchiveWriter | None:
        return self._writer.__enter__() if self._writer else None

    def __exit__(self, *exc_info) -> None:
        if self._writer:
            self._writer.__exit__(*exc_info)
