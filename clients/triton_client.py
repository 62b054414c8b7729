"""Async gRPC client for any model of the repository on Triton (tritonclient), for every task.

``stream()`` sends frames with a bounded number of requests in flight: enough concurrency for
Triton's dynamic batcher to form batches and to hide network round trips, bounded so a slow server
pushes back on the caller instead of queueing frames without limit. Results come back typed
(``clients.results``) and in each frame's own pixels.
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
from clients.results import FrameResult, predictions_from_outputs, to_image_size


class InferenceError(RuntimeError):
    """Triton refused or failed a request; the message is Triton's own."""


class TritonModelClient:
    """Run one model on a Triton server: ``async with TritonModelClient(url, contract) as client:``."""

    def __init__(
        self,
        url: str,
        contract: ModelContract,
        max_in_flight: int = 4,
        frames_per_request: int = 1,
        timeout_s: float = 60.0,
        version: str = "",
    ) -> None:
        if max_in_flight < 1 or frames_per_request < 1:
            raise ValueError("max_in_flight and frames_per_request must be >= 1")
        if frames_per_request > contract.max_batch_size:
            raise ValueError(
                f"frames_per_request {frames_per_request} exceeds the model's "
                f"max_batch_size {contract.max_batch_size}"
            )
        self.url = url
        self.contract = contract
        self.max_in_flight = max_in_flight
        self.frames_per_request = frames_per_request
        self.timeout_s = timeout_s
        self.version = version  # "" = whichever version Triton serves
        self._client = grpcclient.InferenceServerClient(url)

    async def __aenter__(self) -> TritonModelClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self) -> bool:
        try:
            return await self._client.is_server_ready() and await self._client.is_model_ready(
                self.contract.model_name, self.version
            )
        except InferenceServerException:
            return False

    async def served_versions(self) -> list[str]:
        """Versions of this model Triton reports READY."""
        try:
            index = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException:
            return []
        return sorted(
            (
                m.get("version", "")
                for m in index.get("models", [])
                if m.get("name") == self.contract.model_name and m.get("state") == "READY"
            ),
            key=lambda v: int(v) if v.isdigit() else -1,
        )

    async def server_version(self) -> str:
        return (await self._client.get_server_metadata()).version

    async def infer(self, images: np.ndarray, version: str | None = None) -> dict[str, np.ndarray]:
        """One request: uint8 [N, H, W, 3] at the model's size -> the model's outputs by name."""
        return (await self.infer_versioned(images, version))[0]

    async def infer_versioned(
        self, images: np.ndarray, version: str | None = None
    ) -> tuple[dict[str, np.ndarray], str]:
        """Like ``infer``, and the version Triton ran (``version``: a specific one; None: its choice)."""
        tensor = grpcclient.InferInput(
            self.contract.input_name, list(images.shape), np_to_triton_dtype(images.dtype)
        )
        tensor.set_data_from_numpy(images)
        try:
            response = await self._client.infer(
                self.contract.model_name,
                [tensor],
                model_version=self.version if version is None else version,
                outputs=[grpcclient.InferRequestedOutput(name) for name in self.contract.output_names],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as error:
            raise InferenceError(f"Triton rejected the request: {error.message()}") from error
        outputs = {name: response.as_numpy(name) for name in self.contract.output_names}
        return outputs, response.get_response().model_version

    async def predict_image(self, frame: np.ndarray, version: str | None = None) -> FrameResult:
        """One RGB frame of any size -> its ``FrameResult``, in the frame's pixels."""
        return (await self.predict_images([frame], version))[0]

    async def predict_images(self, frames: list[np.ndarray], version: str | None = None) -> list[FrameResult]:
        """A few RGB frames of any sizes, in requests of up to ``max_batch_size`` frames."""
        results: list[FrameResult] = []
        size = self.contract.max_batch_size
        for start in range(0, len(frames), size):
            group = frames[start : start + size]
            started = time.perf_counter()
            batch = np.stack([self.contract.to_model_input(frame) for frame in group])
            preprocess = time.perf_counter() - started
            entry = (
                start,
                [f.shape for f in group],
                asyncio.ensure_future(self._timed_infer(batch, version)),
                preprocess,
            )
            results.extend(await _collect(entry, self.contract))
        return results

    async def stream(
        self, frames: AsyncIterable[np.ndarray] | Iterable[np.ndarray], start_index: int = 0
    ) -> AsyncIterator[FrameResult]:
        """Yield one ``FrameResult`` per RGB frame (any size), in order, each in its frame's pixels."""
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

    async def _timed_infer(
        self, batch: np.ndarray, version: str | None = None
    ) -> tuple[dict[str, np.ndarray], str, float]:
        started = time.perf_counter()
        outputs, served_version = await self.infer_versioned(batch, version)
        return outputs, served_version, time.perf_counter() - started


async def _collect(entry, contract: ModelContract) -> list[FrameResult]:
    first_index, shapes, task, preprocess = entry
    outputs, version, infer_s = await task
    results = []
    predictions = predictions_from_outputs(outputs, contract)
    for offset, (prediction, shape) in enumerate(zip(predictions, shapes, strict=True)):
        started = time.perf_counter()
        prediction = to_image_size(prediction, contract, shape[0], shape[1])
        timings = {"preprocess": preprocess, "infer": infer_s, "postprocess": time.perf_counter() - started}
        results.append(FrameResult(first_index + offset, prediction, timings, version))
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
