"""Locust users for ProdSegmenter; run them with ``python -m loadtest.run`` (``make loadtest``).

- ``CameraUser`` streams frames to Triton over gRPC at ``--camera-fps`` with at most
  ``--camera-window`` requests in flight, and counts the frames it has to drop. ``--camera-wire
  jpeg`` sends each frame as JPEG (``--jpeg-quality``), to the model or its ``<model>_jpeg``
  (``clients.wire.jpeg_route``), and decodes the PNG masks it gets back; the report's ``wire``
  counts tensor bytes sent and received.
- ``UploadUser`` posts a short video to the gateway and polls the job to completion.
- ``StepShape`` ramps the users through ``--steps`` (users per step), ``--step-seconds`` each.

At the end it writes ``--report``: per step, the achieved FPS per camera (p5, median), drops,
latency percentiles, and Triton's queue/compute time per request from its /metrics.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any gRPC channel exists, or gRPC blocks the gevent loop

import cv2  # noqa: E402
import gevent  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import HttpUser, LoadTestShape, User, constant_pacing, events, task  # noqa: E402
from locust.runners import LOCUST_STATE_STOPPING  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

# All cameras share this one process (greenlets): OpenCV's own thread pool would only add wake-ups
# and contend with the stack for the machine's cores.
cv2.setNumThreads(1)
# gRPC's blocking calls run on gevent's thread pool: hand the GIL back to the cameras' loop sooner
# than Python's default 5 ms, or a camera's tick waits for it and its frame counts as dropped.
sys.setswitchinterval(0.0005)

from clients.contract import ModelContract  # noqa: E402
from clients.results import Segmentation, predictions_from_outputs  # noqa: E402
from clients.temporal import DEFAULT_MAX_INTERVAL, ReuseMode, ReuseSettings  # noqa: E402
from clients.triton_client import CHANNEL_ARGS, grpc_target  # noqa: E402
from clients.wire import (  # noqa: E402
    DEFAULT_JPEG_QUALITY,
    JPEG_INPUT,
    PNG_MASKS,
    Wire,
    encode_jpeg,
    jpeg_route_from_triton,
    jpeg_rows,
    masks_from_pngs,
    tensor_bytes,
    wire_output_names,
)
from loadtest.camera import CameraReuse, CameraStream, Reply  # noqa: E402
from loadtest.stats import RunRecorder  # noqa: E402
from loadtest.triton_metrics import TritonSnapshot  # noqa: E402

# The model under load (--model): set at init, before any user starts.
CONTRACT: ModelContract | None = None
RECORDER = RunRecorder()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--triton-grpc", default="127.0.0.1:8001", help="Triton gRPC host:port (or h1:p,h2:p)"
    )
    parser.add_argument("--model", default="shelf_segmenter", help="the model the cameras stream to")
    parser.add_argument("--triton-metrics", default="", help="Triton metrics URL (optional)")
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument("--camera-window", type=int, default=2, help="requests in flight per camera")
    parser.add_argument("--camera-wire", choices=[w.value for w in Wire], default=Wire.RAW.value)
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    parser.add_argument(
        "--camera-reuse",
        choices=[m.value for m in ReuseMode],
        default=ReuseMode.OFF.value,
        help="temporal reuse: only keyframes are requests (clients/temporal.py)",
    )
    parser.add_argument("--camera-max-interval", type=int, default=DEFAULT_MAX_INTERVAL)
    parser.add_argument(
        "--camera-lookahead",
        type=int,
        default=0,
        help="with reuse: frames a carried result may wait for the next keyframe (0: forwards only)",
    )
    parser.add_argument(
        "--camera-pan",
        type=float,
        default=40.0,
        help="pixels per frame the camera pans (the demo video: 6; a fast pan: 16)",
    )
    parser.add_argument("--camera-frames", type=int, default=8, help="frames in the camera's loop")
    parser.add_argument("--steps", default="1,2,4", help="users per step, comma separated")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--upload-video", default="", help="video for UploadUser")
    parser.add_argument("--upload-users", type=int, default=1)
    parser.add_argument(
        "--upload-every-s",
        type=float,
        default=0.0,
        help="each upload user starts a job every N s (or right after a longer one); 0: back to back",
    )
    parser.add_argument("--report", default="out/loadtest/locust_report.json")


def _frames(count: int, pixels_per_frame: float) -> list[np.ndarray]:
    from datagen.shelves import render_pan_frames  # numpy/OpenCV only: no torch in load generators

    scenes = render_pan_frames(3, count, CONTRACT.height, CONTRACT.width, pixels_per_frame=pixels_per_frame)
    return [scene.image for scene in scenes]


FRAMES: list[np.ndarray] = []
# What each camera sends per frame: [1, H, W, 3] pixels, or over the JPEG wire a [1, L] JPEG row
# (encoded once at start: a camera's own encoder costs the load generator nothing).
PAYLOADS: list[np.ndarray] = []
WIRE = Wire.RAW
# Stopped cameras' counters (``CameraCounters`` fields), summed; "frames" is their completed frames.
TRAFFIC_COUNTERS = ("propagated", "dropped_late", "buffered", "bytes_sent", "bytes_received")
TRAFFIC = dict.fromkeys(("frames", *TRAFFIC_COUNTERS), 0)


@events.init.add_listener
def _init(environment, **_) -> None:
    global CONTRACT, WIRE
    options = environment.parsed_options
    CONTRACT = ModelContract.load(options.model)
    UploadUser.fixed_count = options.upload_users
    if options.upload_every_s > 0:  # a steady trickle of uploads rather than a flood
        UploadUser.wait_time = constant_pacing(options.upload_every_s)
    FRAMES.extend(_frames(options.camera_frames, options.camera_pan))
    WIRE = Wire(options.camera_wire)
    if WIRE == Wire.JPEG:
        PAYLOADS.extend(jpeg_rows([encode_jpeg(frame, options.jpeg_quality)]) for frame in FRAMES)
    else:
        PAYLOADS.extend(frame[None] for frame in FRAMES)
    RECORDER.attach(environment)


@events.test_start.add_listener
def _start(environment, **_) -> None:
    options = environment.parsed_options
    RECORDER.start([int(s) for s in options.steps.split(",")], options.step_seconds)
    if options.triton_metrics:
        RECORDER.triton_before = TritonSnapshot.scrape(options.triton_metrics, options.model)


@events.test_stop.add_listener
def _stop(environment, **_) -> None:
    options = environment.parsed_options
    triton = None
    if options.triton_metrics and RECORDER.triton_before is not None:
        try:
            triton = TritonSnapshot.scrape(options.triton_metrics, options.model).since(
                RECORDER.triton_before
            )
        except OSError as error:  # a dead server still gets a report, with the reason
            triton = {"error": str(error)}
    report = RECORDER.report(
        camera_fps=options.camera_fps, camera_window=options.camera_window, triton=triton
    )
    frames = max(TRAFFIC["frames"], 1)
    report["wire"] = {
        "wire": WIRE.value,
        "jpeg_quality": options.jpeg_quality if WIRE == Wire.JPEG else None,
        "frames": TRAFFIC["frames"],
        # With temporal reuse only keyframes are requests: bytes per frame count every frame served.
        "reuse": options.camera_reuse,
        "max_interval": options.camera_max_interval if options.camera_reuse != ReuseMode.OFF else None,
        "lookahead": options.camera_lookahead if options.camera_reuse != ReuseMode.OFF else None,
        "propagated_frames": TRAFFIC["propagated"],
        # Whole run: frames the cameras' capture buffers overflowed with while the load generator's
        # greenlets waited for the CPU (counted as dropped), and frames sent late from them.
        "dropped_late_frames": TRAFFIC["dropped_late"],
        "buffered_frames": TRAFFIC["buffered"],
        "camera_pan_px_per_frame": options.camera_pan,
        "camera_loop_frames": options.camera_frames,
        "bytes_sent_per_frame": TRAFFIC["bytes_sent"] / frames,
        "bytes_received_per_frame": TRAFFIC["bytes_received"] / frames,
    }
    path = Path(options.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


class CameraUser(User):
    """One shelf camera streaming to Triton."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        # Several replicas (``h1:p,h2:p``): one channel balancing frame by frame, as the SDK does.
        several = "," in options.triton_grpc
        self.client = grpcclient.InferenceServerClient(
            grpc_target(options.triton_grpc), channel_args=CHANNEL_ARGS if several else None
        )
        self.jpeg_model = self._jpeg_model() if WIRE == Wire.JPEG else ""  # before the camera starts
        settings = ReuseSettings(
            ReuseMode(options.camera_reuse),
            max_interval=options.camera_max_interval,
            lookahead=options.camera_lookahead,
        )
        self.camera = CameraStream(
            self._infer,
            PAYLOADS,
            options.camera_fps,
            options.camera_window,
            on_result=self._report,
            on_drop=lambda: RECORDER.dropped(self),
            reuse=CameraReuse(settings, FRAMES) if settings.enabled else None,
            on_carried=self._report_carried,
        )
        RECORDER.add_camera(self)

    def _jpeg_model(self) -> str:
        """Where this camera's JPEG frames go: the model itself or its ensemble (clients.wire)."""
        index, metadata = {}, None
        try:
            index = self.client.get_model_repository_index(as_json=True)
            metadata = self.client.get_model_metadata(CONTRACT.model_name, as_json=True)
        except InferenceServerException:  # Triton not serving yet: the ensemble, whose requests then fail
            pass
        return jpeg_route_from_triton(CONTRACT.model_name, index, metadata).model

    def _infer(self, payload: np.ndarray) -> Reply:
        """One frame (a ``PAYLOADS`` entry): its tensor bytes sent and received, and its prediction."""
        if WIRE == Wire.JPEG:
            model, input_name = self.jpeg_model, JPEG_INPUT
            names = wire_output_names(CONTRACT)
        else:
            model, input_name, names = CONTRACT.model_name, CONTRACT.input_name, CONTRACT.output_names
        tensor = grpcclient.InferInput(input_name, list(payload.shape), "UINT8")
        tensor.set_data_from_numpy(payload)
        requested = [grpcclient.InferRequestedOutput(name) for name in names]
        response = self.client.infer(model, [tensor], outputs=requested, client_timeout=10)
        outputs = {name: response.as_numpy(name) for name in names}
        received = sum(tensor_bytes(output) for output in outputs.values())
        if PNG_MASKS in outputs:  # a real camera client decodes what it gets: its cost is load
            prediction = Segmentation(masks_from_pngs(outputs[PNG_MASKS])[0])
        else:
            prediction = predictions_from_outputs(outputs, CONTRACT)[0]
        return Reply(payload.nbytes, received, prediction)

    def _report_carried(self, latency_s: float, error: Exception | None) -> None:
        self._report(latency_s, error, request_type="reuse", name="frame carried from its keyframe")

    def _report(
        self, latency_s: float, error: Exception | None, request_type: str = "grpc", name: str = "frame"
    ) -> None:
        RECORDER.completed(self, latency_s, error)
        self.environment.events.request.fire(
            request_type=request_type,
            name=f"{CONTRACT.model_name} {name}",
            response_time=latency_s * 1000,
            response_length=CONTRACT.height * CONTRACT.width,
            exception=error,
            context={},
        )

    @task
    def stream(self) -> None:
        # Locust's graceful stop marks the user as stopping; the camera finishes its frames in flight.
        self.camera.run(should_stop=lambda: self._state == LOCUST_STATE_STOPPING)

    def on_stop(self) -> None:
        RECORDER.remove_camera(self)
        counters = self.camera.counters
        TRAFFIC["frames"] += counters.completed
        for name in TRAFFIC_COUNTERS:
            TRAFFIC[name] += getattr(counters, name)
        self.client.close()  # an open channel makes Locust hang at exit


class UploadUser(HttpUser):
    """A retailer uploading a short shelf video and waiting for the overlay."""

    fixed_count = 1

    @task
    def upload_and_wait(self) -> None:
        options = self.environment.parsed_options
        video = Path(options.upload_video)
        if not video.is_file():
            raise RuntimeError("UploadUser needs --upload-video")
        with open(video, "rb") as file:
            response = self.client.post(
                f"/v1/models/{options.model}/videos",
                files={"file": (video.name, file, "video/mp4")},
                name="POST /v1/models/{model}/videos",
            )
        if response.status_code != 202:
            return
        started = time.perf_counter()
        status_url = response.json()["status_url"]
        while True:
            job = self.client.get(status_url, name="GET /v1/models/{model}/videos/{id}").json()
            if job["status"] in ("succeeded", "failed"):
                break
            gevent.sleep(0.5)
        self.environment.events.request.fire(
            request_type="job",
            name="video job to completion",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None if job["status"] == "succeeded" else RuntimeError(job["error"]),
            context={},
        )
        self.client.delete(status_url, name="DELETE /v1/models/{model}/videos/{id}")


class StepShape(LoadTestShape):
    """Hold each step's user count for --step-seconds, then stop."""

    def tick(self):
        options = self.runner.environment.parsed_options
        steps = [int(s) for s in options.steps.split(",")]
        index = int(self.get_run_time() // options.step_seconds)
        if index >= len(steps):
            return None
        # Upload users are a fixed count on top: each step's number is cameras.
        uploads = options.upload_users if UploadUser in self.runner.user_classes else 0
        return steps[index] + uploads, max(steps)
