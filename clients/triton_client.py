"""Async gRPC client for the shelf_segmenter model on Triton (tritonclient).

``segment()`` streams frames with a bounded number of requests in flight: enough concurrency for
Triton's dynamic batcher to form batches and to hide network round trips, bounded so a slow server
pushes back on the caller instead of queueing frames without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients.contract import ModelContract
from clients.result import FrameResult


class SegmentationError(RuntimeError):
    """Triton refused or failed a request; the message is Triton's own."""


class TritonSegmenter:
    """Segment frames on a Triton server. Use as ``async with TritonSegmenter(url) as segmenter:``."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        contract: ModelContract | None = None,
        max_in_flight: int = 4,
        frames_per_request: int = 1,
        timeout_s: float = 60.0,
    ) -> None:
        if max_in_flight < 1 or frames_per_request < 1:
            raise ValueError("max_in_flight and frames_per_request must be >= 1")
        self.url = url
        self.contract = contract or ModelContract.load()
        if frames_per_request > self.contract.max_batch_size:
            raise ValueError(
                f"frames_per_request {frames_per_request} exceeds the model's "
                f"max_batch_size {self.contract.max_batch_size}"
            )
        self.max_in_flight = max_in_flight
        self.frames_per_request = frames_per_request
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    async def __aenter__(self) -> TritonSegmenter:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self) -> bool:
        try:
            return await self._client.is_server_ready() and await self._client.is_model_ready(
                self.contract.model_name
            )
        except InferenceServerException:
            return False

    async def server_version(self) -> str:
        return (await self._client.get_server_metadata()).version

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """One request: uint8 [N, H, W, 3] at the model's size -> uint8 [N, H, W] class ids."""
        tensor = grpcclient.InferInput(
            self.contract.input_name, list(images.shape), np_to_triton_dtype(images.dtype)
        )
        tensor.set_data_from_numpy(images)
        try:
            response = await self._client.infer(
                self.contract.model_name,
                [tensor],
                outputs=[grpcclient.InferRequestedOutput(self.contract.output_name)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as error:
            raise SegmentationError(f"Triton rejected the request: {error.message()}") from error
        return response.as_numpy(self.contract.output_name)

    async def segment_image(self, frame: np.ndarray) -> FrameResult:
        """One RGB frame of any size -> its ``FrameResult`` (mask at the frame's size)."""
        started = time.perf_counter()
        batch = self.contract.to_model_input(frame)[None]
        preprocess = time.perf_counter() - started
        entry = (0, [frame.shape], asyncio.ensure_future(self._timed_infer(batch)), preprocess)
        return (await _collect(entry, self.contract))[0]

    async def segment(
        self, frames: AsyncIterable[np.ndarray] | Iterable[np.ndarray], start_index: int = 0
    ) -> AsyncIterator[FrameResult]:
        """Yield one ``FrameResult`` per RGB frame (any size), in order, masks at each frame's size."""
        in_flight: deque[tuple[int, list[tuple[int, ...]], asyncio.Task, float]] = deque()
        index = start_index
        try:
            async for group in _grouped(frames, self.frames_per_request):
                started = time.perf_counter()
                batch = np.stack([self.contract.to_model_input(frame) for frame in group])
                preprocess = time.perf_counter() - started
                task = asyncio.ensure_future(self._timed_infer(batch))
                in_flight.append((index, [frame.shape for frame in group], task, preprocess))
                index += len(group)
                if len(in_flight) >= self.max_in_flight:
                    for result in await _collect(in_flight.popleft(), self.contract):
                        yield result
            while in_flight:
                for result in await _collect(in_flight.popleft(), self.contract):
                    yield result
        finally:
            for *_, task, _ in in_flight:
                task.cancel()

    async def _timed_infer(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        masks = await self.infer(batch)
        return masks, time.perf_counter() - started


async def _collect(entry, contract: ModelContract) -> list[FrameResult]:
    first_index, shapes, task, preprocess = entry
    masks, infer_s = await task
    results = []
    for offset, (mask, shape) in enumerate(zip(masks, shapes, strict=True)):
        started = time.perf_counter()
        mask = contract.mask_to_frame(mask, shape)
        timings = {"preprocess": preprocess, "infer": infer_s, "postprocess": time.perf_counter() - started}
        results.append(FrameResult(first_index + offset, mask, timings))
    return results


async def _grouped(frames: AsyncIterable[np.ndarray] | Iterable[np.ndarray], size: int):
    group: list[np.ndarray] = []
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            group.append(frame)
            if len(group) == size:
                yield group
                group = []
    else:
        for frame in frames:
            group.append(frame)
            if len(group) == size:
                yield group
                group = []
    if group:
        yield group
