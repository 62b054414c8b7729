"""The video job for any model: decode -> infer on Triton -> annotate -> encode, stages overlapping.

Decoding and encoding run in worker threads (PyAV and OpenCV release the GIL) a chunk of frames at a
time, while the event loop keeps several requests in flight to Triton. Bounded queues between the
stages keep memory flat: a slow stage pushes back instead of piling up frames.

Artefacts per task (every one appears atomically, and only if every frame succeeded):

- all tasks: ``overlay.mp4`` (H.264, yuv420p, faststart: plays in browsers);
- segmentation: ``masks.zip`` (lossless PNG class ids per frame) and ``timeline.jsonl`` (class shares);
- detection: ``detections.jsonl`` (boxes in video pixels, labels, scores per frame);
- classification: ``predictions.jsonl`` (label, confidence, probabilities per frame).

Each JSON line says its frame's ``source``: ``inferred``, or ``propagated`` from a keyframe when the
job runs with temporal reuse (``reuse``, ``clients.temporal``: only keyframes go to Triton).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.atomic import atomic_path
from clients.contract import ModelContract, Task
from clients.masks import MaskArchiveWriter
from clients.overlay import Annotator
from clients.results import FrameResult
from clients.temporal import REUSE_OFF, KeyframeReuse, ReuseSettings
from clients.triton_client import TritonModelClient
from clients.video import VideoSink, probe, read_chunks

StageObserver = Callable[[str, float, int], None]  # (stage, seconds, frames)

ARTIFACTS: dict[Task, tuple[str, ...]] = {
    Task.SEGMENTATION: ("overlay.mp4", "masks.zip", "timeline.jsonl"),
    Task.DETECTION: ("overlay.mp4", "detections.jsonl"),
    Task.CLASSIFICATION: ("overlay.mp4", "predictions.jsonl"),
}


@dataclass
class VideoJobStats:
    frames: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    engine_calls: int = 0  # frames the model ran on (all of them unless temporal reuse is on)
    reuse: dict | None = None  # temporal reuse's figures (clients.temporal.ReuseStats), when on

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


async def process_video(
    input_path: Path,
    output_dir: Path,
    client: TritonModelClient,
    chunk_size: int = 8,
    alpha: float = 0.45,
    on_progress: Callable[[int], None] | None = None,
    observe: StageObserver | None = None,
    on_result: Callable[[np.ndarray, FrameResult], None] | None = None,
    reuse: ReuseSettings = REUSE_OFF,
) -> VideoJobStats:
    """Run a whole video through ``client``'s model; writes the task's ``ARTIFACTS`` into ``output_dir``.

    With ``reuse`` on, only keyframes go to Triton and the other frames get propagated results;
    ``on_result`` sees the frames the model ran on."""
    info = probe(input_path)
    contract = client.contract
    annotate = Annotator(contract, alpha)
    stats = VideoJobStats()

    def record(stage: str, seconds: float, frames: int) -> None:
        stats.stage_seconds[stage] = stats.stage_seconds.get(stage, 0.0) + seconds
        if observe:
            observe(stage, seconds, frames)

    started = time.perf_counter()
    originals: dict[int, np.ndarray] = {}  # frames in flight, kept for drawing their annotation
    chunks = _decode_ahead(read_chunks(input_path, chunk_size), record)

    async def frames_to_infer() -> AsyncIterator[np.ndarray]:
        index = 0
        async for chunk in chunks:
            for frame in chunk:
                originals[index] = frame
                index += 1
                yield frame

    output_dir = Path(output_dir)
    with (
        VideoSink(output_dir / "overlay.mp4", fps=info.fps) as sink,
        _TaskSinks(output_dir, contract) as sinks,
    ):
        writer = _ChunkWriter(sink, sinks, annotate, record)
        pending: list[tuple[np.ndarray, FrameResult]] = []
        source = KeyframeReuse(client, reuse) if reuse.enabled else client
        try:
            async for result in source.stream(frames_to_infer()):
                if result.source == "inferred":
                    stats.engine_calls += 1
                    record("infer", result.timings["infer"] / client.frames_per_request, 1)
                for stage in ("motion", "propagate"):  # temporal reuse's own work
                    if stage in result.timings:
                        record(stage, result.timings[stage], 1)
                frame = originals.pop(result.frame_index)
                if on_result and result.source == "inferred":  # watchers judge the model's own output
                    on_result(frame, result)
                pending.append((frame, result))
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
    if isinstance(source, KeyframeReuse):
        stats.reuse = source.stats.to_dict()
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
    """Annotate + encode one chunk at a time in a worker thread, overlapping with inference."""

    def __init__(self, sink: VideoSink, sinks: _TaskSinks, annotate: Annotator, record) -> None:
        self._sink, self._sinks, self._annotate, self._record = sink, sinks, annotate, record
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
        annotated = [self._annotate(frame, result.prediction) for frame, result in chunk]
        overlay_done = time.perf_counter()
        self._record("overlay", overlay_done - started, len(chunk))
        for frame in annotated:
            self._sink.write(frame)
        for _, result in chunk:
            self._sinks.write(result)
        self._record("encode", time.perf_counter() - overlay_done, len(chunk))


class _TaskSinks:
    """The per-frame artefacts of a task beside the overlay: mask archive and JSON lines."""

    def __init__(self, output_dir: Path, contract: ModelContract) -> None:
        self._contract = contract
        self._stack = contextlib.ExitStack()
        self._masks: MaskArchiveWriter | None = None
        self._lines = None
        names = ARTIFACTS[contract.task]
        self._masks_path = output_dir / "masks.zip" if "masks.zip" in names else None
        self._lines_path = output_dir / next(name for name in names if name.endswith(".jsonl"))

    def __enter__(self) -> _TaskSinks:
        with contextlib.ExitStack() as stack:
            if self._masks_path is not None:
                self._masks = stack.enter_context(MaskArchiveWriter(self._masks_path))
            partial = stack.enter_context(atomic_path(self._lines_path))
            self._lines = stack.enter_context(open(partial, "w"))
            self._stack = stack.pop_all()
        return self

    def write(self, result: FrameResult) -> None:
        prediction, labels = result.prediction, self._contract.labels
        if self._masks is not None:
            self._masks.write(prediction.mask)
            body = prediction.summary(labels)
        else:
            body = prediction.to_json(labels)
            body.pop("task", None)
        line = {"frame": result.frame_index, "source": result.source, **body}
        self._lines.write(json.dumps(line) + "\n")

    def __exit__(self, *exc_info) -> None:
        self._stack.__exit__(*exc_info)
