"""Async gRPC client for any model of the repository on Triton (tritonclient), for every task.

``stream()`` sends frames with a bounded number of requests in flight: enough concurrency for
Triton's dynamic batcher to form batches and to hide network round trips, bounded so a slow server
pushes back on the caller instead of queueing frames without limit. Results come back typed
(``clients.results``) and in each frame's own pixels.

``wire="jpeg"`` sends each frame as JPEG and gets segmentation masks back as PNG, decoded here:
callers get the same results for about a tenth of the bytes (``clients/wire.py``). The frames go to
the model itself where its served config takes ``jpeg`` (the CPU configs), else to its
``<model>_jpeg`` ensemble (GPU nodes); which one, Triton's model metadata says. The default stays
raw pixels. A request that pins a version (``version`` here or per call: an A/B split, a rollout
check) goes as JPEG only to the model itself, with the version; where the frames would go to the
ensemble, which runs whichever version is newest, it goes raw. ``traffic`` counts the tensor bytes
each way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients.contract import ModelContract
from clients.results import FrameResult, predictions_from_outputs, to_image_size
from clients.wire import (
    DEFAULT_JPEG_QUALITY,
    JPEG_INPUT,
    PNG_MASKS,
    JpegRoute,
    Wire,
    encode_jpeg,
    jpeg_route_from_triton,
    jpeg_rows,
    masks_from_pngs,
    tensor_bytes,
    wire_output_names,
)


class InferenceError(RuntimeError):
    """Triton refused or failed a request; the message is Triton's own."""


class TritonUnavailableError(InferenceError):
    """No Triton replica answered, after retries: try again later (the gateway says 503)."""


# gRPC codes that mean "this replica is gone or going": the request is safe to send to another one.
RETRYABLE = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}


def grpc_target(endpoints: str) -> str:
    """A gRPC target for one Triton or several.

    ``host:port`` is one server; ``10.0.0.1:8001,10.0.0.2:8001`` (IP literals) several, as gRPC's
    ``ipv4:`` target; ``dns:///triton-headless:8001`` every address a (headless) Service's name
    resolves to. Several addresses are balanced request by request (``round_robin``), and a replica
    that disconnects is skipped until it is back.
    """
    parts = [part.strip() for part in endpoints.split(",") if part.strip()]
    if len(parts) <= 1:
        return endpoints.strip()
    return "ipv4:" + ",".join(parts)


def endpoint_list(endpoints: str) -> list[str]:
    """The individual addresses of ``endpoints`` (for per-replica health reports)."""
    return [part.strip() for part in endpoints.removeprefix("ipv4:").split(",") if part.strip()]


CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
# How long the JPEG wire's state (is <model>_jpeg ready, which version does its -1 run) is reused
# before Triton is asked again: one repository-index call every few seconds, not one per frame.
WIRE_STATE_TTL_S = 5.0


@dataclass
class Traffic:
    """Tensor bytes this client sent and received (request inputs, response outputs), and frames."""

    frames: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


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
        retries: int = 4,
        wire: Wire | str = Wire.RAW,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    ) -> None:
        if max_in_flight < 1 or frames_per_request < 1:
            raise ValueError("max_in_flight and frames_per_request must be >= 1")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
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
        self.retries = retries  # attempts after the first, on another replica, with backoff
        self.wire = Wire(wire)
        self.jpeg_quality = jpeg_quality
        self.traffic = Traffic()
        self._client = grpcclient.InferenceServerClient(grpc_target(url), channel_args=CHANNEL_ARGS)
        self._wire_state: tuple[float, JpegRoute] | None = None  # (checked at, the route then)

    async def __aenter__(self) -> TritonModelClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def is_ready(self) -> bool:
        """Triton serves the model (and, with ``wire="jpeg"``, takes its frames as JPEG)."""
        try:
            ready = await self._client.is_server_ready() and await self._client.is_model_ready(
                self.contract.model_name, self.version
            )
        except InferenceServerException:
            return False
        return ready and (self.wire == Wire.RAW or await self.jpeg_wire_ready())

    async def jpeg_wire_ready(self) -> bool:
        """Whether Triton takes this model's frames as JPEG (looked up at most every few seconds)."""
        return (await self._jpeg_route()).ready

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
        names = self.contract.output_names
        version = self._pinned(version)
        model, input_name = self.contract.model_name, self.contract.input_name
        response = await self._send(model, input_name, images, names, version)
        outputs = {name: response.as_numpy(name) for name in names}
        self._count(len(images), images, outputs)
        return outputs, response.get_response().model_version

    async def infer_jpeg(
        self, jpegs: list[bytes], version: str = "", route: JpegRoute | None = None
    ) -> tuple[dict[str, np.ndarray], str]:
        """One request over the JPEG wire: JPEGs at the model's size -> the model's outputs by name
        (masks decoded from PNG) and the version of the model that ran. ``version`` pins one, which
        only the model itself can run (``route``: the one the caller chose the wire by)."""
        rows, output_names = jpeg_rows(jpegs), wire_output_names(self.contract)
        route = route or await self._jpeg_route()
        if version and not route.direct:
            raise InferenceError(f"{route.model} runs the newest version only; send version {version} raw")
        response = await self._send(route.model, JPEG_INPUT, rows, output_names, version)
        outputs = {name: response.as_numpy(name) for name in output_names}
        self._count(len(jpegs), rows, outputs)
        if PNG_MASKS in outputs:  # a segmentation's masks: back to class ids, bit-identical
            outputs = {self.contract.output_names[0]: masks_from_pngs(outputs[PNG_MASKS])}
        # The model reports the version it ran; an ensemble reports its own, so the newest served.
        return outputs, response.get_response().model_version if route.direct else route.newest_version

    async def _send(
        self, model: str, input_name: str, data: np.ndarray, output_names: tuple[str, ...], version: str = ""
    ):
        """One inference request, retried on another replica while replicas are unavailable."""
        tensor = grpcclient.InferInput(input_name, list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        requested = [grpcclient.InferRequestedOutput(name) for name in output_names]
        for attempt in range(self.retries + 1):
            try:
                return await self._client.infer(
                    model,
                    [tensor],
                    model_version=version,
                    outputs=requested,
                    client_timeout=self.timeout_s,
                )
            except InferenceServerException as error:
                if str(error.status()) not in RETRYABLE:
                    raise InferenceError(f"Triton rejected the request: {error.message()}") from error
                if attempt == self.retries:
                    attempts = f"{attempt + 1} attempts"
                    raise TritonUnavailableError(
                        f"no Triton replica at {self.url} answered after {attempts}: {error.message()}"
                    ) from error
                await asyncio.sleep(0.1 * 3**attempt)  # 0.1, 0.3, 0.9, 2.7 s: a replica restarts or goes
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _count(self, frames: int, sent: np.ndarray, received: dict[str, np.ndarray]) -> None:
        self.traffic.frames += frames
        self.traffic.bytes_sent += sent.nbytes
        self.traffic.bytes_received += sum(tensor_bytes(array) for array in received.values())

    async def _jpeg_route(self) -> JpegRoute:
        """Where JPEG frames go now (``clients.wire.jpeg_route``), looked up at most every few seconds."""
        now = time.monotonic()
        if self._wire_state is None or now - self._wire_state[0] > WIRE_STATE_TTL_S:
            index, metadata = {}, None
            try:
                index = await self._client.get_model_repository_index(as_json=True)
                metadata = await self._client.get_model_metadata(self.contract.model_name, as_json=True)
            except InferenceServerException:
                pass  # unready (or gone) meanwhile: the next look finds out
            self._wire_state = (now, jpeg_route_from_triton(self.contract.model_name, index, metadata))
        return self._wire_state[1]

    async def _jpeg_route_for(self, version: str | None) -> JpegRoute | None:
        """The route a request's frames take as JPEG, or None when they go raw: the raw wire, or a
        pinned version the route cannot run (the ensemble runs only the newest, see the top)."""
        if self.wire != Wire.JPEG:
            return None
        route = await self._jpeg_route()
        return route if route.direct or not self._pinned(version) else None

    def _pinned(self, version: str | None) -> str:
        """The version a request pins: its own, else the client's ("" = Triton's choice)."""
        return self.version if version is None else version

    def _payload(self, group: list[np.ndarray], as_jpeg: bool) -> np.ndarray | list[bytes]:
        """A request's frames at the model's size: a raw batch, or one JPEG each."""
        inputs = [self.contract.to_model_input(frame) for frame in group]
        if as_jpeg:
            return [encode_jpeg(image, self.jpeg_quality) for image in inputs]
        return np.stack(inputs)

    async def predict_image(self, frame: np.ndarray, version: str | None = None) -> FrameResult:
        """One RGB frame of any size -> its ``FrameResult``, in the frame's pixels."""
        return (await self.predict_images([frame], version))[0]

    async def predict_images(self, frames: list[np.ndarray], version: str | None = None) -> list[FrameResult]:
        """A few RGB frames of any sizes, in requests of up to ``max_batch_size`` frames."""
        results: list[FrameResult] = []
        size = self.contract.max_batch_size
        for start in range(0, len(frames), size):
            group = frames[start : start + size]
            route = await self._jpeg_route_for(version)
            started = time.perf_counter()
            payload = self._payload(group, route is not None)
            preprocess = time.perf_counter() - started
            entry = (
                start,
                [f.shape for f in group],
                asyncio.ensure_future(self._timed_infer(payload, version, route)),
                preprocess,
            )
            results.extend(await _collect(entry, self.contract))
        return results

    async def predict_jpeg(self, jpeg: bytes, height: int, width: int) -> FrameResult:
        """One JPEG already at the model's input size, sent as it is over the JPEG wire (the gateway's
        live camera forwards the browser's frames so); the result in a ``height`` x ``width`` frame."""
        entry = (0, [(height, width, 3)], asyncio.ensure_future(self._timed_infer([jpeg])), 0.0)
        return (await _collect(entry, self.contract))[0]

    async def stream(
        self, frames: AsyncIterable[np.ndarray] | Iterable[np.ndarray], start_index: int = 0
    ) -> AsyncIterator[FrameResult]:
        """Yield one ``FrameResult`` per RGB frame (any size), in order, each in its frame's pixels."""
        in_flight: deque[tuple[int, list[tuple[int, ...]], asyncio.Task, float]] = deque()
        index = start_index
        try:
            async for group in _grouped(frames, self.frames_per_request):
                route = await self._jpeg_route_for(None)
                started = time.perf_counter()
                payload = self._payload(group, route is not None)
                preprocess = time.perf_counter() - started
                task = asyncio.ensure_future(self._timed_infer(payload, None, route))
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
        self, payload: np.ndarray | list[bytes], version: str | None = None, route: JpegRoute | None = None
    ) -> tuple[dict[str, np.ndarray], str, float]:
        started = time.perf_counter()
        if isinstance(payload, list):
            outputs, served_version = await self.infer_jpeg(payload, self._pinned(version), route)
        else:
            outputs, served_version = await self.infer_versioned(payload, version)
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
