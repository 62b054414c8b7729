"""The web pages, served by the gateway itself: static files under /ui and the live-camera WebSocket.

GET /                          redirects to /ui/
GET /ui/...                    gateway/web/ (HTML, CSS, JS modules, vendored uPlot); no CDN at run time
GET /ui/config.json            links only the deployment knows: ``PRODSEG_GRAFANA_URL`` (or null)
WS  /v1/models/{model}/live    the browser sends JPEG frames (binary messages); each answer is the
                               images route's per-task JSON plus ``latency_ms`` (text messages);
                               ``?reuse=auto`` (``max_interval``, ``tolerance``): temporal reuse,
                               forwards only (``lookahead`` is refused: see ``_reuse_option``)

The live socket never queues: the page sends a frame only after the previous answer came back, and
should a client send faster, frames that arrive while ``MAX_IN_FLIGHT`` frames are being inferred are
dropped and counted (``{"dropped": n}`` rides on the next answer). With API keys on
(``PRODSEG_AUTH_ENABLED``), a browser cannot set headers on a WebSocket, so the first message must be
``{"api_key": "..."}``; a refused key gets the JSON error body and close code 1008. Each socket's
frames also reach the model's drift monitor and active-learning sampler, as a video's do
(``watch_live``, given by the app).

With temporal reuse on (``clients.temporal.LiveReuse``), only keyframes are inferred; the other frames
are answered with their keyframe's result moved along the camera's motion (``"source": "propagated"``,
``engine_calls`` so far rides on each answer). Those cost no inference, so they are never dropped.

None of these routes is in the OpenAPI document (schemathesis fuzzes that document).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from clients.results import FrameResult, Segmentation
from clients.temporal import LiveReuse, Plan, ReuseSettings
from clients.triton_client import InferenceError
from clients.wire import decode_jpeg, encode_jpeg, looks_like_jpeg
from gateway.auth import Authenticator, AuthError
from gateway.errors import ApiError
from gateway.models import ModelCatalog, ServedModel
from gateway.settings import GatewaySettings

log = logging.getLogger("prodseg.gateway.web")

WEB_ROOT = Path(__file__).parent / "web"
MAX_IN_FLIGHT = 2  # frames inferred at once per socket; more arriving meanwhile are dropped
MAX_FRAME_BYTES = 4 << 20  # a JPEG from a camera is tens of KB; refuse anything absurd
POLICY_VIOLATION = 1008  # WebSocket close code for a refused key


FrameHook = Callable[[np.ndarray, FrameResult], None]


def install_web(
    app: FastAPI,
    catalog: ModelCatalog,
    settings: GatewaySettings,
    watch_live: Callable[[ServedModel, str], FrameHook] | None = None,
) -> None:
    """Mount the pages at /ui (/ redirects there) and add the live-camera WebSocket per model.

    ``watch_live(model, socket_id)`` gives a socket's hook, called with every frame and its result."""
    authenticator = _authenticator()

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/ui/config.json", include_in_schema=False)
    async def page_config() -> dict:
        """What the page links to that only the deployment knows (Grafana, when configured)."""
        return {"grafana_url": os.environ.get("PRODSEG_GRAFANA_URL") or None}

    app.mount("/ui", StaticFiles(directory=WEB_ROOT, html=True), name="ui")

    @app.websocket("/v1/models/{model}/live")
    async def live(websocket: WebSocket, model: str) -> None:
        await websocket.accept()
        try:
            served = catalog.get(model)
            reuse = _reuse_option(websocket)
            if authenticator is not None:
                first = await websocket.receive_text()
                authenticator.authorize(_bearer(first), model)
        except ApiError as error:
            await _refuse(websocket, error)
            return
        except WebSocketDisconnect:
            return
        on_result = watch_live(served, f"live-{uuid.uuid4().hex[:12]}") if watch_live else None
        await _serve_frames(websocket, served, on_result, LiveReuse(reuse) if reuse.enabled else None)


def _reuse_option(websocket: WebSocket) -> ReuseSettings:
    try:
        settings = ReuseSettings.from_options(websocket.query_params)
    except ValueError as error:
        raise ApiError(422, "invalid_option", str(error)) from error
    if settings.lookahead:  # its answers would wait for frames the page sends only after them
        raise ApiError(
            422,
            "invalid_option",
            "lookahead is not offered on the live socket: the page sends each frame after the previous "
            "answer, so a held answer would wait forever (the SDK's stream_live and `prodseg stream` "
            "offer it)",
        )
    return settings


async def _serve_frames(
    websocket: WebSocket, served: ServedModel, on_result: FrameHook | None, reuse: LiveReuse | None = None
) -> None:
    """Decode each JPEG, infer it, answer its JSON; drop what arrives while MAX_IN_FLIGHT are busy."""
    in_flight: set[asyncio.Task] = set()  # frames being inferred (propagated ones are not counted)
    carried: set[asyncio.Task] = set()  # frames being propagated (temporal reuse)
    dropped = 0
    send_lock = asyncio.Lock()

    async def answer(data: bytes, received: float, planned: _Planned | None = None) -> None:
        if planned is None:
            body = await _annotate(served, data, on_result)
        else:
            body = await _reuse(served, planned, on_result)
        body["latency_ms"] = round((time.perf_counter() - received) * 1000, 2)
        body["dropped"] = dropped  # so far on this socket
        if reuse is not None:
            body["engine_calls"] = reuse.stats.keyframes  # so far on this socket
        try:
            async with send_lock:
                await websocket.send_text(json.dumps(body))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the page went away while this frame was being inferred

    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                continue  # text messages (a repeated key, a ping) carry no frame
            received = time.perf_counter()
            frame, plan = await _plan(reuse, data) if reuse is not None else (None, None)  # in order
            inferred = plan is None or plan.keyframe  # a propagated frame costs no inference: never dropped
            if inferred and len(in_flight) >= MAX_IN_FLIGHT:
                dropped += 1
                if plan is not None:
                    reuse.skipped(plan)
                continue
            planned = None
            if plan is not None:  # its result starts now, before the next frame is planned
                infer = functools.partial(_infer_live, served, data, frame)  # the JPEG wire too
                planned = _Planned(frame, plan, reuse.result(plan, infer), time.perf_counter())
            task = asyncio.create_task(answer(data, received, planned))
            tasks = in_flight if inferred else carried
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the page went away
    finally:
        for task in in_flight | carried:
            task.cancel()


@dataclass(frozen=True)
class _Planned:
    """A frame under temporal reuse: its plan, and its result to come (inferred or propagated)."""

    frame: np.ndarray
    plan: Plan
    result: asyncio.Future
    started: float


async def _plan(reuse: LiveReuse, data: bytes) -> tuple[np.ndarray | None, Plan | None]:
    """A frame and its temporal-reuse plan; (None, None) when it is no frame (``_annotate`` says why)."""
    frame = await asyncio.to_thread(decode_jpeg, data) if len(data) <= MAX_FRAME_BYTES else None
    return (None, None) if frame is None else (frame, await reuse.plan(frame))


async def _reuse(served: ServedModel, planned: _Planned, on_result: FrameHook | None) -> dict:
    """A planned frame's answer: inferred (a keyframe) or propagated from its keyframe."""
    try:
        result = await planned.result
    except InferenceError as error:
        return _error("inference_failed", str(error))
    if on_result is not None and planned.plan.keyframe:  # watchers judge the model's own output
        on_result(planned.frame, result)
    return _body(served, planned.frame, result, planned.started)


async def _annotate(served: ServedModel, data: bytes, on_result: FrameHook | None = None) -> dict:
    """One JPEG -> the images route's per-task JSON, or an error body (the stream goes on)."""
    if len(data) > MAX_FRAME_BYTES:
        return _error("frame_too_large", f"a live frame must be under {MAX_FRAME_BYTES} bytes")
    frame = await asyncio.to_thread(decode_jpeg, data)
    if frame is None:
        return _error("not_an_image", "the frame is not a decodable JPEG or PNG")
    started = time.perf_counter()
    try:
        result = await _infer_live(served, data, frame)
    except InferenceError as error:
        return _error("inference_failed", str(error))
    if on_result is not None:
        on_result(frame, result)
    return _body(served, frame, result, started)


def _body(served: ServedModel, frame: np.ndarray, result: FrameResult, started: float) -> dict:
    labels = served.contract.labels
    prediction = result.prediction
    body = {"model": served.name, "version": result.model_version, "width": frame.shape[1]}
    body["source"] = result.source
    body |= {"height": frame.shape[0], "inference_ms": round((time.perf_counter() - started) * 1000, 2)}
    if isinstance(prediction, Segmentation):
        # A live overlay needs no per-class RLE: one run-length list of class ids (row-major) is
        # smaller and draws in one pass.
        body |= {"task": "segmentation", "mask_rle": _class_runs(prediction.mask)}
        body |= prediction.summary(labels)
    else:
        body |= prediction.to_json(labels)
    return body


async def _infer_live(served: ServedModel, data: bytes, frame: np.ndarray) -> FrameResult:
    """Infer one live frame over the JPEG wire when Triton serves it (``clients/wire.py``): the
    browser's JPEG goes on as it is when the page drew it at the model's size, else it is resized and
    re-encoded here; raw pixels only when the wire is not served. ``frame`` is ``data`` decoded (the
    drift monitor and the sampler need it anyway), so the result comes back in its pixels."""
    client, contract = served.client, served.contract
    if not await client.jpeg_wire_ready():
        return await client.predict_image(frame)
    height, width = frame.shape[:2]
    if (height, width) != contract.input_size or not looks_like_jpeg(data):
        data = await asyncio.to_thread(lambda: encode_jpeg(contract.to_model_input(frame)))
    return await client.predict_jpeg(data, height, width)


def _class_runs(mask: np.ndarray) -> list[int]:
    """Row-major runs as [class_id, length, class_id, length, ...]."""
    flat = mask.ravel()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return np.stack([flat[starts].astype(np.int64), lengths]).T.ravel().tolist()


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _bearer(first_message: str) -> str | None:
    """The key of the socket's first message, ``{"api_key": "..."}``, as an Authorization value."""
    try:
        key = json.loads(first_message).get("api_key")
    except (json.JSONDecodeError, AttributeError):
        key = None
    return f"Bearer {key}" if isinstance(key, str) and key else None


async def _refuse(websocket: WebSocket, error: ApiError) -> None:
    await websocket.send_text(json.dumps(_error(error.code, error.message) | {"status": error.status_code}))
    # 1008 for a refused key; otherwise 4000 + the HTTP status (an application close code, e.g. 4404).
    await websocket.close(POLICY_VIOLATION if isinstance(error, AuthError) else 4000 + error.status_code)


def _authenticator() -> Authenticator | None:
    """The key checker when ``PRODSEG_AUTH_ENABLED`` is on, else None (the same switch as the API)."""
    if os.environ.get("PRODSEG_AUTH_ENABLED", "").lower() not in ("1", "true", "yes", "on"):
        return None
    authenticator = Authenticator.from_env()
    if authenticator is None:
        raise ValueError("PRODSEG_AUTH_ENABLED is on but PRODSEG_API_KEYS_FILE is not set")
    return authenticator
