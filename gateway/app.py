"""The gateway's HTTP API: every model of the repository behind one set of routes.

GET  /v1/models                                   the models: task, labels, input size, versions, ready
GET  /v1/models/{model}                           one of them
POST /v1/models/{model}/images                    one or more images (parts "file") -> predictions
POST /v1/models/{model}/videos                    a video (part "file") -> 202 job; ?reuse=auto infers
                                                  keyframes only (max_interval, tolerance: clients.temporal)
GET  /v1/models/{model}/videos/{id}               job status and progress
GET  /v1/models/{model}/videos/{id}/{artifact}    overlay.mp4, masks.zip, detections.jsonl, ...
DELETE /v1/models/{model}/videos/{id}             forget a finished job
POST /v1/frames, /v1/videos, GET /v1/videos/...   the default model's aliases (the flagship's old routes)
GET  /healthz /readyz /metrics

Uploads are parsed as streams (gateway.uploads), so the OpenAPI document declares the multipart
bodies explicitly (``openapi_extra``), and every route lists the error statuses it can answer with
the one error shape of gateway.errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from clients.contract import Task
from clients.images import ImageError, decode_image
from clients.masks import encode_mask_png
from clients.pipeline import ARTIFACTS
from clients.repository import model_versions
from clients.results import Detections, FrameResult, Segmentation
from clients.temporal import DEFAULT_MAX_INTERVAL, MAX_INTERVAL_LIMIT, MAX_TOLERANCE, ReuseSettings
from clients.triton_client import InferenceError, TritonUnavailableError, endpoint_list
from clients.video import CorruptVideoError, VideoError, probe
from gateway.ab import ABTests
from gateway.active_learning import ActiveLearner, ActiveLearningSettings, ToLabelQueue
from gateway.auth import Authenticator, AuthError
from gateway.batches import build_input
from gateway.drift import DriftMonitor
from gateway.errors import ApiError, ErrorBody, error_response, errors, install_error_handlers
from gateway.feedback import FeedbackStore, PredictionCache
from gateway.jobs import Job, JobManager, JobStatus
from gateway.metrics import GatewayMetrics
from gateway.models import ModelCatalog, ServedModel
from gateway.retrain import Retrainer, load_policies
from gateway.settings import GatewaySettings
from gateway.store import GatewayStore
from gateway.uploads import StoredUpload, receive_files
from gateway.web import install_web

JobId = Annotated[str, PathParam(description="the id returned when the video was uploaded")]

log = logging.getLogger("prodseg.gateway")
MODEL_PATH = re.compile(r"^/v1/models/([^/]+)")
DEFAULT_ROUTES = ("/v1/frames", "/v1/videos")

BATCH_ARTIFACTS = ("predictions.csv", "predictions.jsonl")
ARTIFACT_TYPES = {
    "predictions.csv": "text/csv",
    "overlay.mp4": "video/mp4",
    "masks.zip": "application/zip",
    "timeline.jsonl": "application/x-ndjson",
    "detections.jsonl": "application/x-ndjson",
    "predictions.jsonl": "application/x-ndjson",
}


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: list[dict[str, Any]]
    input_size: dict[str, int]
    max_batch_size: int
    versions: dict[str, list[int]]
    ready: bool
    default: bool


class ModelList(BaseModel):
    models: list[ModelInfo]
    default_model: str | None
    unavailable: dict[str, str]


class ImageResult(BaseModel):
    model_config = {"extra": "allow"}
    prediction_id: str
    filename: str
    width: int
    height: int
    task: str


class ImagePredictions(BaseModel):
    model: str
    version: str
    results: list[ImageResult]


class ABStart(BaseModel):
    weights: dict[str, int]


class ABReport(BaseModel):
    model_config = {"extra": "allow"}
    id: str
    model: str
    weights: dict[str, int]
    started_at: float
    versions: dict[str, dict[str, Any]]
    tests: dict[str, Any]


class JobAccepted(BaseModel):
    id: str
    model: str
    status: str
    status_url: str


class JobInfo(BaseModel):
    model_config = {"extra": "allow"}
    id: str
    model: str
    status: str
    filename: str
    frames_done: int
    frames_total: int | None
    progress: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: dict[str, bool]
    unavailable: dict[str, str]


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    catalog = ModelCatalog(settings)
    for name in catalog.contracts:
        metrics.register_model(name)
    authenticator = _authenticator(settings, metrics)
    drift = _drift_monitors(settings, catalog, metrics)
    store = GatewayStore(settings.data_dir / "gateway.sqlite")
    ab_tests = ABTests(store)
    ab_tests.start_configured(json.loads(settings.ab_tests) if settings.ab_tests else {})
    kept_predictions = PredictionCache(settings.kept_predictions)
    feedback = FeedbackStore(settings.data_dir / "feedback")
    learner = ActiveLearner(  # the "to label" queue: inputs worth labelling, from production traffic
        ActiveLearningSettings(),
        ToLabelQueue(store, settings.data_dir / "to_label"),
        settings.model_repository,
        metrics.registry,
    )
    retrainer = Retrainer(
        store, settings.data_dir, settings.model_repository, load_policies(settings.retrain_policies)
    )

    drifting_since: dict[str, float] = {}

    def drifted_for_s(model: str) -> float:
        """How long the model's drift alarm has held without a break (0 when it does not)."""
        monitor = drift.get(model)
        if monitor is None or monitor.report().get("status") != "drift":
            drifting_since.pop(model, None)
            return 0.0
        return time.time() - drifting_since.setdefault(model, time.time())

    async def check_retrain_policies() -> None:
        """Start the retrains the policies call for; then look again every ``retrain_check_s``."""
        while True:
            await asyncio.sleep(settings.retrain_check_s)
            for name in catalog.models:
                since = retrainer.last_version_time(name)
                new_labels = feedback.summary(name, since)["corrections_since_last_version"]
                reason = retrainer.due(name, new_labels, drifted_for_s(name))
                last = retrainer.refresh(name)
                if reason and (last is None or (last.status != "running" and last.started_at < since)):
                    try:
                        retrainer.start(name, f"policy: {reason}")
                    except ApiError as error:
                        log.warning("retrain of %s not started: %s", name, error.message)

    def subject_of(request: Request) -> str:
        """Who a request is from, for sticky A/B assignment: API key name, client id, or address."""
        key = getattr(request.state, "api_key_name", None)
        client_id = request.headers.get("x-client-id")
        return key or client_id or (request.client.host if request.client else "anonymous")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog.open_clients()  # gRPC channels must be created inside the server's event loop
        app.state.jobs = JobManager(settings, metrics, store, learner)
        app.state.jobs.recover(catalog.models)  # jobs a previous process left: resumed or failed, never lost
        policy_checks = asyncio.create_task(check_retrain_policies())
        for monitor in drift.values():
            monitor.start()
        yield
        policy_checks.cancel()
        retrainer.stop_all()
        for monitor in drift.values():
            monitor.close()
        await app.state.jobs.shutdown()
        await catalog.close()
        store.close()

    app = FastAPI(
        title="ProdSegmenter gateway",
        version="0.2.0",
        description="Vision models on NVIDIA Triton: segmentation, detection and classification.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        """With keys on, every /v1 request needs a key allowed for its model and within its rate."""
        path = request.url.path
        if authenticator is not None and path.startswith("/v1/") and not path.endswith("/live"):
            match = MODEL_PATH.match(path)
            model = (
                match.group(1)
                if match
                else (catalog.default_model if path.startswith(DEFAULT_ROUTES) else None)
            )
            header = Authenticator.key_from_headers(request.headers)
            try:
                info = await asyncio.to_thread(authenticator.authorize, header, model)
            except AuthError as error:
                return error_response(error.status_code, error.code, error.message, error.headers)
            request.state.api_key_name = info.name
        return await call_next(request)

    @app.middleware("http")
    async def time_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        model = request.path_params.get("model", "")
        if not model and getattr(route, "path", "").startswith(("/v1/frames", "/v1/videos")):
            model = catalog.default_model or ""
        metrics.requests.labels(
            model, getattr(route, "path", "unmatched"), request.method, str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    # ---- core operations, shared by the per-model routes and the default model's aliases ---------

    async def predict(
        request: Request, served: ServedModel, format: str, confidence: float | None, max_files: int
    ) -> Response:
        contract = served.contract
        directory = settings.data_dir / "images" / uuid.uuid4().hex
        try:
            uploads = await receive_files(request, directory, settings.max_image_bytes * max_files, max_files)
            started = time.perf_counter()
            decoded_uploads = [
                await asyncio.to_thread(_decode, upload, settings.max_image_pixels) for upload in uploads
            ]
            frames = [frame for frame, _ in decoded_uploads]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if format == "png" and len(frames) > 1:
            raise ApiError(422, "invalid_option", "format=png takes one image; use format=json for several")
        decoded = time.perf_counter()
        metrics.request_stage_seconds.labels(served.name, "decode").observe(decoded - started)
        version = ab_tests.version_for(served.name, subject_of(request))  # None: Triton's served version
        try:
            results = await served.client.predict_images(frames, version)
        except InferenceError as error:
            if version is not None:
                ab_tests.record(served.name, version, 0.0, None)
            raise inference_error(error) from error
        inferred = time.perf_counter()
        served_version = results[0].model_version
        metrics.request_stage_seconds.labels(served.name, "infer").observe(inferred - decoded)
        metrics.frames.labels(served.name, "image").inc(len(results))
        metrics.predictions.labels(served.name, served_version).inc(len(results))
        metrics.inference_seconds.labels(served.name, served_version).observe(inferred - decoded)
        monitor = drift.get(served.name)
        for frame, result in zip(frames, results, strict=True):
            ab_tests.record(served.name, served_version, inferred - decoded, result.prediction)
            if monitor is not None:  # queued for a worker thread: never slows the answer
                # Uploaded images are independent scenes (source None); a video's frames are not.
                monitor.observe(frame, drift_summary(result.prediction, contract.num_classes))
        for result, upload, (frame, data) in zip(results, uploads, decoded_uploads, strict=True):
            sample = learner.assess(contract, result.model_version, result.prediction)
            if sample is not None:  # rare and rate-capped: the PNG and the row are written off the loop
                await asyncio.to_thread(
                    learner.offer,
                    contract,
                    result.model_version,
                    sample,
                    result.prediction,
                    frame,
                    data,
                    "image",
                    upload.filename,
                )
        headers = {"X-Inference-Ms": f"{(inferred - decoded) * 1000:.2f}", "X-Model-Version": served_version}
        if contract.task == Task.SEGMENTATION and len(results) == 1 and format != "json":
            # The PNG answer: keep only the class shares for feedback, not a full RLE nobody reads.
            frame, data = decoded_uploads[0]
            kept = results[0].prediction.summary(contract.labels)
            headers["X-Labels"] = ",".join(contract.labels.names)
            headers["X-Prediction-Id"] = kept_predictions.keep(
                served.name, served_version, data, frame.shape, kept
            )
            return Response(encode_mask_png(results[0].mask), media_type="image/png", headers=headers)
        answers = [
            _result_json(result, upload.filename, frame.shape, served, confidence)
            for result, upload, frame in zip(results, uploads, frames, strict=True)
        ]
        for answer, (frame, data) in zip(answers, decoded_uploads, strict=True):  # for feedback by id
            answer["prediction_id"] = kept_predictions.keep(
                served.name, served_version, data, frame.shape, answer
            )
        body = {"model": served.name, "version": served_version, "results": answers}
        metrics.request_stage_seconds.labels(served.name, "postprocess").observe(
            time.perf_counter() - inferred
        )
        return JSONResponse(body, headers=headers)

    async def upload_video(
        request: Request, served: ServedModel, prefix: str, reuse: ReuseSettings
    ) -> JSONResponse:
        jobs: JobManager = app.state.jobs
        job_id, directory = jobs.new_job_directory()
        try:
            upload = (
                await receive_files(request, directory, settings.max_upload_bytes, 1, names=["upload"])
            )[0]
            info = await asyncio.to_thread(probe, upload.path)
        except VideoError as error:
            shutil.rmtree(directory, ignore_errors=True)
            status = 422 if isinstance(error, CorruptVideoError) else 415
            code = "corrupt_video" if isinstance(error, CorruptVideoError) else "not_a_video"
            raise ApiError(status, code, str(error)) from error
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        artifacts = ARTIFACTS[served.contract.task]
        job = Job(job_id, served.name, artifacts, directory, upload.filename, upload.size, info.frames)
        job.reuse = reuse
        jobs.submit(job, served)
        url = f"{prefix}/{job_id}"
        return JSONResponse(
            {"id": job_id, "model": served.name, "status": job.status.value, "status_url": url},
            status_code=202,
            headers={"Location": url},
        )

    def job_of(model: str | None, job_id: str, kind: str = "video") -> Job:
        job = app.state.jobs.get(job_id)
        if job is None or job.kind != kind or (model is not None and job.model != model):
            raise ApiError(404, "job_not_found", f"no video job with id {job_id!r}")
        return job

    def artifact_file(job: Job, name: str) -> FileResponse:
        if name not in job.artifacts:
            raise ApiError(
                404, "artifact_not_found", f"job {job.id} has no {name!r}; it has {list(job.artifacts)}"
            )
        if job.status != JobStatus.SUCCEEDED:
            detail = f": {job.error}" if job.error else ""
            raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status.value}{detail}")
        return FileResponse(job.directory / name, media_type=ARTIFACT_TYPES[name])

    def delete_job(job: Job) -> Response:
        if not job.finished:
            raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status.value}; wait for it to end")
        app.state.jobs.delete(job)
        return Response(status_code=204)

    # ---- the model list, then each model's own routes (documented with exactly its options) ----------

    @app.get("/v1/models", response_model=ModelList, summary="Every served model", tags=["models"])
    async def list_models() -> dict:
        described = await asyncio.gather(*(catalog.describe(m) for m in catalog.models.values()))
        return {"models": described, "default_model": catalog.default_model, "unavailable": catalog.errors}

    async def upload_batch(request: Request, served: ServedModel) -> JSONResponse:
        jobs: JobManager = app.state.jobs
        job_id, directory = jobs.new_job_directory()
        try:
            limit = settings.max_batch_images
            uploads = await receive_files(request, directory / "parts", settings.max_upload_bytes, limit)
            count = await asyncio.to_thread(
                build_input, uploads, directory / "input", limit, settings.max_upload_bytes
            )
            shutil.rmtree(directory / "parts", ignore_errors=True)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        name = uploads[0].filename if len(uploads) == 1 else f"{len(uploads)} images"
        job = Job(job_id, served.name, BATCH_ARTIFACTS, directory, name, 0, count, kind="batch")
        jobs.submit(job, served)
        return JSONResponse(
            {"id": job_id, "model": served.name, "status": job.status.value, "status_url": job.route},
            status_code=202,
            headers={"Location": job.route},
        )

    for name, contract in catalog.contracts.items():
        _add_ab_routes(app, name, contract, catalog, ab_tests)
        _add_batch_routes(app, name, catalog, settings, upload_batch, job_of, artifact_file, delete_job)
        _add_feedback_routes(app, name, contract, settings, feedback, kept_predictions, ab_tests, learner)
        _add_retrain_routes(app, name, retrainer)
        _add_drift_routes(app, name, drift)
        _add_model_routes(
            app, name, contract, catalog, settings, predict, upload_video, job_of, artifact_file, delete_job
        )

    # Any other model name: 404 naming the known models (these routes are not in the OpenAPI document).
    @app.api_route("/v1/models/{model}", methods=["GET"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/images", methods=["POST"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/videos", methods=["POST"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/videos/{job_id}", methods=["GET", "DELETE"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/videos/{job_id}/{artifact}", methods=["GET"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/ab", methods=["GET", "PUT", "DELETE"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/feedback", methods=["GET", "POST"], include_in_schema=False)
    @app.api_route(
        "/v1/models/{model}/feedback/to_label/{item_id}/image", methods=["GET"], include_in_schema=False
    )
    @app.api_route("/v1/models/{model}/retrain", methods=["GET", "POST"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/drift", methods=["GET"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/batches", methods=["POST"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/batches/{job_id}", methods=["GET", "DELETE"], include_in_schema=False)
    @app.api_route("/v1/models/{model}/batches/{job_id}/{artifact}", methods=["GET"], include_in_schema=False)
    async def unknown_model(model: str) -> None:
        catalog.get(model)  # raises 404 model_not_found
        raise ApiError(404, "not_found", "no such route")

    # ---- the default model's aliases (the flagship's routes before the platform had several models) ----

    image_upload = _multipart("one image in a part 'file'", settings.max_images_per_request, many=False)

    @app.post(
        "/v1/frames",
        responses=_image_responses(),
        openapi_extra=image_upload,
        summary="The default model on one image (alias of /v1/models/{default}/images)",
        tags=["default model"],
    )
    async def predict_frame(request: Request) -> Response:
        return await predict(request, catalog.default(), "", None, max_files=1)

    @app.post(
        "/v1/videos",
        summary="The default model on a video (alias)",
        tags=["default model"],
        **_video_upload(),
    )
    async def upload_default_video(request: Request, reuse: ReuseQuery) -> JSONResponse:
        return await upload_video(request, catalog.default(), "/v1/videos", reuse)

    @app.get(
        "/v1/videos/{job_id}",
        response_model=JobInfo,
        responses=errors(404),
        summary="Job status (alias)",
        tags=["default model"],
    )
    async def default_video_status(job_id: JobId) -> dict:
        return job_of(None, job_id).to_json()

    @app.delete(
        "/v1/videos/{job_id}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "deleted"}, **errors(404, 409)},
        tags=["default model"],
    )
    async def delete_default_video(job_id: JobId) -> Response:
        return delete_job(job_of(None, job_id))

    @app.get(
        "/v1/videos/{job_id}/overlay.mp4",
        response_class=FileResponse,
        responses=_artifact_responses(("overlay.mp4",)),
        tags=["default model"],
    )
    async def default_video_overlay(job_id: JobId) -> FileResponse:
        return artifact_file(job_of(None, job_id), "overlay.mp4")

    @app.get(
        "/v1/videos/{job_id}/masks.zip",
        response_class=FileResponse,
        responses=_artifact_responses(("masks.zip",)),
        tags=["default model"],
    )
    async def default_video_masks(job_id: JobId) -> FileResponse:
        return artifact_file(job_of(None, job_id), "masks.zip")

    # ---- operations ---------------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses=errors(503))
    async def readyz() -> JSONResponse:
        models = catalog.models.values()
        ready = dict(
            zip(catalog.models, await asyncio.gather(*(m.client.is_ready() for m in models)), strict=True)
        )
        if ready and all(ready.values()):
            return JSONResponse({"status": "ready", "models": ready, "unavailable": catalog.errors})
        waiting = [name for name, ok in ready.items() if not ok] or ["(no model configured)"]
        down = [url for url, ok in (await endpoint_health(settings.triton_grpc_url)).items() if not ok]
        where = f"; unreachable or not ready: {', '.join(down)}" if down else ""
        message = f"Triton at {settings.triton_grpc_url}: not ready for {', '.join(waiting)}{where}"
        return error_response(503, "triton_not_ready", message, {"Retry-After": "5"})

    if not settings.metrics_port:  # else served on its own port only (gateway.__main__), never publicly

        @app.get(
            "/metrics",
            response_class=Response,
            responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}},
        )
        async def prometheus_metrics() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics = metrics

    def watch_live(served: ServedModel, socket_id: str) -> Callable[[np.ndarray, FrameResult], None]:
        """A live camera socket is a video: its frames feed drift (one source) and active learning."""
        monitor, contract = drift.get(served.name), served.contract
        sample_frame = learner.watch_video(contract, socket_id, "live camera")
        frames_seen = itertools.count()

        def on_result(frame: np.ndarray, result: FrameResult) -> None:
            # Each live frame is inferred alone (index 0): number them, as a video's frames are.
            result = dataclasses.replace(result, frame_index=next(frames_seen))
            if monitor is not None:
                summary = drift_summary(result.prediction, contract.num_classes)
                monitor.observe(frame, summary, source=socket_id)
            sample_frame(frame, result)

        return on_result

    install_web(app, catalog, settings, watch_live)  # the pages at /ui and the live-camera WebSocket
    return app


IMAGE_TYPES = "image/png, image/jpeg, image/bmp, image/webp"
VIDEO_TYPES = "video/mp4, video/quicktime, video/x-matroska, video/webm, video/x-msvideo"

FormatOption = Annotated[
    Literal["png", "json"],
    Query(description="'png': class ids as a PNG at the image's size (one image); 'json': RLE masks"),
]
ConfidenceOption = Annotated[float, Query(ge=0.0, le=1.0, description="minimum detection score, 0..1")]
ReuseOption = Annotated[
    Literal["off", "auto"],
    Query(
        description="temporal reuse: 'auto' runs the model on keyframes only and carries their results "
        "to the frames between by the camera's motion (every frame still gets a result); "
        "'off' runs it on every frame"
    ),
]
MaxIntervalOption = Annotated[
    int,
    Query(ge=1, le=MAX_INTERVAL_LIMIT, description="reuse=auto: keyframes at most this many frames apart"),
]
ToleranceOption = Annotated[
    float,
    Query(
        gt=0.0,
        le=MAX_TOLERANCE,
        description="reuse=auto: multiplies the thresholds that call for a keyframe (above 1: fewer)",
    ),
]


def _video_reuse(
    reuse: ReuseOption = "off",
    max_interval: MaxIntervalOption = DEFAULT_MAX_INTERVAL,
    tolerance: ToleranceOption = 1.0,
) -> ReuseSettings:
    """A video job's temporal-reuse option: the three query parameters (documented, and checked by
    FastAPI) as one setting."""
    try:
        return ReuseSettings(reuse, max_interval, tolerance)
    except ValueError as error:
        raise ApiError(422, "invalid_option", str(error)) from error


ReuseQuery = Annotated[ReuseSettings, Depends(_video_reuse)]


def _add_model_routes(
    app: FastAPI,
    name: str,
    contract,
    catalog: ModelCatalog,
    settings,
    predict,
    upload_video,
    job_of,
    artifact_file,
    delete_job,
) -> None:
    """The routes of one model, each documented with exactly the options its task takes."""
    base, tags = f"/v1/models/{name}", [name]
    artifacts = ARTIFACTS[contract.task]
    options = {Task.SEGMENTATION: {"format"}, Task.DETECTION: {"confidence"}}.get(contract.task, set())

    def refuse_other_options(request: Request) -> None:
        for key in request.query_params:
            if key not in options:
                takes = f"takes only {', '.join(sorted(options))}" if options else "takes no options"
                raise ApiError(
                    422, "invalid_option", f"{key!r} does not apply: {name} ({contract.task}) {takes}"
                )

    @app.get(base, response_model=ModelInfo, summary=f"{name}: task, labels, size, versions", tags=tags)
    async def describe() -> dict:
        return await catalog.describe(catalog.get(name))

    images = {
        "responses": _image_responses(contract.task),
        "openapi_extra": _multipart(
            "one or more images, each in a part 'file'", settings.max_images_per_request, many=True
        ),
        "summary": f"{name}: predict on one or several images",
        "tags": tags,
    }
    if contract.task == Task.SEGMENTATION:

        @app.post(f"{base}/images", **images)
        async def segment_images(request: Request, format: FormatOption = "png") -> Response:
            refuse_other_options(request)
            return await predict(request, catalog.get(name), format, None, settings.max_images_per_request)

    elif contract.task == Task.DETECTION:

        @app.post(f"{base}/images", **images)
        async def detect_images(request: Request, confidence: ConfidenceOption = 0.0) -> Response:
            refuse_other_options(request)
            return await predict(request, catalog.get(name), "", confidence, settings.max_images_per_request)

    else:

        @app.post(f"{base}/images", **images)
        async def classify_images(request: Request) -> Response:
            refuse_other_options(request)
            return await predict(request, catalog.get(name), "", None, settings.max_images_per_request)

    @app.post(f"{base}/videos", summary=f"{name}: run a video (a job)", tags=tags, **_video_upload())
    async def video(request: Request, reuse: ReuseQuery) -> JSONResponse:
        return await upload_video(request, catalog.get(name), f"{base}/videos", reuse)

    @app.get(f"{base}/videos/{{job_id}}", response_model=JobInfo, responses=errors(404), tags=tags)
    async def video_status(job_id: JobId) -> dict:
        return job_of(name, job_id).to_json()

    @app.delete(
        f"{base}/videos/{{job_id}}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "deleted"}, **errors(404, 409)},
        tags=tags,
    )
    async def delete_video(job_id: JobId) -> Response:
        return delete_job(job_of(name, job_id))

    async def video_artifact(job_id: JobId, artifact: str) -> FileResponse:
        return artifact_file(job_of(name, job_id), artifact)

    # This task's artefacts only: an enum in the document, a 422 for any other name. Set as an object,
    # not a string annotation, since it is built here at run time.
    artifact_names = Literal[artifacts]  # type: ignore[valid-type]
    video_artifact.__annotations__["artifact"] = Annotated[
        artifact_names, PathParam(description="an artefact")
    ]
    app.get(
        f"{base}/videos/{{job_id}}/{{artifact}}",
        response_class=FileResponse,
        responses=_artifact_responses(artifacts),
        summary=f"{name}: download a finished job's artefact",
        tags=tags,
    )(video_artifact)


class FeedbackRecord(BaseModel):
    model_config = {"extra": "allow"}
    id: str
    model: str
    version: str
    kind: str
    verdict: str | None
    created_at: float


class FeedbackSummary(BaseModel):
    model_config = {"extra": "allow"}
    model: str
    total: int
    corrections: int
    correct: int
    wrong: int
    by_version: dict[str, dict[str, int]]
    to_label: int  # open items of the active-learning queue


class ToLabelItemInfo(BaseModel):
    model_config = {"extra": "allow"}
    id: str
    model: str
    version: str
    reason: Literal["class_based", "low_confidence", "temporal_instability"]
    score: float
    detail: str
    created_at: float
    prediction: dict[str, Any]
    source: Literal["image", "video"]
    image_url: str
    state: str


class ToLabelList(BaseModel):
    model: str
    state: Literal["to_label"]
    items: list[ToLabelItemInfo]


TEXT_FEEDBACK_FIELDS = ("prediction_id", "to_label_id", "verdict", "boxes", "label")


def _add_feedback_routes(
    app: FastAPI,
    name: str,
    contract,
    settings,
    feedback: FeedbackStore,
    kept: PredictionCache,
    ab_tests: ABTests,
    learner: ActiveLearner,
) -> None:
    """Feedback on a prediction: a correction in the task's form, or a verdict; its counts; and the
    active-learning "to label" queue (listed with ``state=to_label``, completed by ``to_label_id``)."""
    base, tags = f"/v1/models/{name}/feedback", [name]
    fields: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "the image (or send prediction_id)"},
        "prediction_id": {
            "type": "string",
            "minLength": 1,
            "description": "the id of a prediction this gateway answered",
        },
        "to_label_id": {
            "type": "string",
            "minLength": 1,
            "description": "the id of an item of the 'to label' queue (GET ...?state=to_label): labels it",
        },
        "verdict": {"type": "string", "enum": ["correct", "wrong"]},
    }
    if contract.task == Task.SEGMENTATION:
        fields["mask"] = {
            "type": "string",
            "format": "binary",
            "description": "PNG of class ids, the image's size",
        }
    elif contract.task == Task.DETECTION:
        fields["boxes"] = {
            "type": "string",
            "description": 'JSON: [{"box": [x1, y1, x2, y2], "label": "..."}] in image pixels',
        }
    else:
        fields["label"] = {"type": "string", "enum": contract.labels.names}
    text_fields = set(TEXT_FEEDBACK_FIELDS)  # what a form without files can carry
    correction = {Task.SEGMENTATION: "mask", Task.DETECTION: "boxes"}.get(contract.task, "label")
    needs_a_verdict_or_correction = [{"required": ["verdict"]}, {"required": [correction]}]
    body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": fields,
                        "additionalProperties": False,
                        "allOf": [
                            {
                                "anyOf": [
                                    {"required": ["file"]},
                                    {"required": ["prediction_id"]},
                                    {"required": ["to_label_id"]},
                                ]
                            },
                            {"anyOf": needs_a_verdict_or_correction},
                        ],
                    },
                    "encoding": {"file": {"contentType": IMAGE_TYPES}, "mask": {"contentType": "image/png"}},
                },
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {k: v for k, v in fields.items() if k in text_fields},
                        "additionalProperties": False,
                        "allOf": [
                            {"anyOf": [{"required": ["prediction_id"]}, {"required": ["to_label_id"]}]},
                            {
                                "anyOf": needs_a_verdict_or_correction
                                if correction in text_fields
                                else [{"required": ["verdict"]}]
                            },
                        ],
                    }
                },
            },
            "description": "a correction in the task's form, or a verdict, on an image or a kept prediction",
        }
    }

    @app.post(
        base,
        status_code=201,
        response_model=FeedbackRecord,
        responses={201: {"description": "stored"}, **errors(400, 404, 409, 413, 415, 422)},
        openapi_extra=body,
        summary=f"{name}: send feedback on a prediction",
        tags=tags,
    )
    async def send_feedback(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > 2 * settings.max_image_bytes:
            raise ApiError(413, "upload_too_large", f"feedback over {2 * settings.max_image_bytes} bytes")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise ApiError(415, "not_a_form", "send feedback as a form (multipart/form-data with files)")
        try:
            form = await request.form(max_files=2, max_fields=8)
        except Exception as error:  # malformed multipart
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {error}") from error
        empty = [name for name in TEXT_FEEDBACK_FIELDS if form.get(name) == ""]
        if empty:
            raise ApiError(422, "invalid_feedback", f"{empty[0]}: empty; leave the field out instead")
        prediction_id, to_label_id = _text(form, "prediction_id"), _text(form, "to_label_id")
        item = learner.queue.claim(name, to_label_id) if to_label_id else None  # 404 / 409
        try:
            record = await store_feedback(request, form, item, prediction_id)
        except BaseException:
            if item is not None:
                learner.queue.release(item)  # refused feedback labels nothing: the item stays queued
            raise
        if item is not None:
            await asyncio.to_thread(learner.queue.finish, item, record["id"])
        return JSONResponse(record, status_code=201)

    async def store_feedback(request: Request, form, item, prediction_id: str | None) -> dict:
        if item is not None:
            data = await asyncio.to_thread(learner.queue.image_path(item).read_bytes)
            version, prediction = item.version, item.prediction
        elif prediction_id:
            kept_prediction = kept.get(name, prediction_id)
            data, version, prediction = (
                kept_prediction.image_bytes,
                kept_prediction.version,
                kept_prediction.prediction,
            )
        elif hasattr(form.get("file"), "read"):
            data, version, prediction = await form["file"].read(), "", None
        else:
            raise ApiError(
                422, "invalid_feedback", "send the image in a part 'file', a prediction_id or a to_label_id"
            )
        try:
            frame = decode_image(data, settings.max_image_pixels)
        except ImageError as error:
            raise ApiError(415, error.code, f"file: {error}") from error
        target, mask = None, None
        if contract.task == Task.DETECTION and _text(form, "boxes") is not None:
            try:
                target = {"boxes": json.loads(_text(form, "boxes"))}
            except json.JSONDecodeError as error:
                raise ApiError(422, "invalid_feedback", f"boxes: not JSON ({error})") from error
        elif contract.task == Task.CLASSIFICATION and _text(form, "label") is not None:
            target = {"label": _text(form, "label")}
        elif contract.task == Task.SEGMENTATION and hasattr(form.get("mask"), "read"):
            mask = await form["mask"].read()
        png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
        key_name = getattr(request.state, "api_key_name", None)
        record = await asyncio.to_thread(
            feedback.add,
            contract,
            png,
            frame.shape[0],
            frame.shape[1],
            target,
            mask,
            _text(form, "verdict"),
            version,
            prediction,
            key_name,
            None if item is None else {"id": item.id, "reason": item.reason, "score": item.score},
        )
        if version and record["verdict"]:
            ab_tests.record_label(name, version, record["verdict"] == "correct")
        return record

    @app.get(
        base,
        response_model=FeedbackSummary | ToLabelList,
        responses=errors(422),
        summary=f"{name}: feedback counts, or with state=to_label the active-learning queue",
        tags=tags,
    )
    async def feedback_counts(
        state: Annotated[
            Literal["to_label"] | None,
            Query(description="'to_label': list the open items of the active-learning queue instead"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="most items listed (newest first)")] = 50,
    ) -> dict:
        if state == "to_label":
            items = await asyncio.to_thread(learner.queue.items, name, limit)
            return {"model": name, "state": "to_label", "items": [item.to_json() for item in items]}
        return feedback.summary(name) | {"to_label": learner.queue.open_count(name)}

    @app.get(
        f"{base}/to_label/{{item_id}}/image",
        response_class=FileResponse,
        responses={
            200: {"description": "the queued input", "content": {"image/png": {}}},
            **errors(404, 409),
        },
        summary=f"{name}: the image of an item of the 'to label' queue (PNG)",
        tags=tags,
    )
    async def to_label_image(
        item_id: Annotated[str, PathParam(description="an item id of GET ...?state=to_label")],
    ) -> FileResponse:
        item = learner.queue.get(name, item_id)
        if item.completed_at is not None:
            raise ApiError(
                409, "already_labelled", f"item {item_id!r} was labelled; its image is in the feedback"
            )
        path = learner.queue.image_path(item)
        if not path.is_file():
            raise ApiError(404, "to_label_image_missing", f"item {item_id!r} has no image on this gateway")
        return FileResponse(path, media_type="image/png")


def _text(form, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value != "" else None


class DriftReport(BaseModel):
    model_config = {"extra": "allow"}
    status: str


class RetrainStatus(BaseModel):
    model_config = {"extra": "allow"}
    model: str
    policy: dict[str, Any]
    last_run: dict[str, Any] | None


def _add_batch_routes(
    app: FastAPI, name: str, catalog: ModelCatalog, settings, upload_batch, job_of, artifact_file, delete_job
) -> None:
    """Batch jobs of one model: a zip or several images in, predictions.csv and .jsonl out."""
    base, tags = f"/v1/models/{name}/batches", [name]
    file_schema = {"type": "string", "format": "binary"}
    body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": file_schema,
                                "minItems": 1,
                                "maxItems": settings.max_batch_images,
                            }
                        },
                    },
                    "encoding": {"file": {"contentType": f"application/zip, {IMAGE_TYPES}"}},
                }
            },
            "description": "one zip of images, or several images, each in a part 'file'",
        }
    }

    @app.post(
        base,
        status_code=202,
        response_model=JobAccepted,
        responses={202: {"description": "queued"}, **errors(400, 413, 415, 422)},
        openapi_extra=body,
        summary=f"{name}: a batch job over many images (CSV and JSONL out; resumes after a restart)",
        tags=tags,
    )
    async def batch(request: Request) -> JSONResponse:
        return await upload_batch(request, catalog.get(name))

    @app.get(f"{base}/{{job_id}}", response_model=JobInfo, responses=errors(404), tags=tags)
    async def batch_status(job_id: JobId) -> dict:
        return job_of(name, job_id, "batch").to_json()

    @app.delete(
        f"{base}/{{job_id}}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "deleted"}, **errors(404, 409)},
        tags=tags,
    )
    async def delete_batch(job_id: JobId) -> Response:
        return delete_job(job_of(name, job_id, "batch"))

    async def batch_artifact(job_id: JobId, artifact: str) -> FileResponse:
        return artifact_file(job_of(name, job_id, "batch"), artifact)

    batch_artifact.__annotations__["artifact"] = Annotated[
        Literal["predictions.csv", "predictions.jsonl"], PathParam(description="an artefact")
    ]
    app.get(
        f"{base}/{{job_id}}/{{artifact}}",
        response_class=FileResponse,
        responses=_artifact_responses(BATCH_ARTIFACTS),
        summary=f"{name}: download a finished batch's predictions",
        tags=tags,
    )(batch_artifact)


def _add_drift_routes(app: FastAPI, name: str, drift: dict) -> None:
    @app.get(
        f"/v1/models/{name}/drift",
        response_model=DriftReport,
        responses=errors(404),
        summary=f"{name}: the drift report (features, tests, verdict) of the recent window",
        tags=[name],
    )
    async def drift_report() -> dict:
        monitor = drift.get(name)
        if monitor is None:
            raise ApiError(
                404, "no_drift_monitor", f"{name} is not monitored (no drift reference, or drift is off)"
            )
        return monitor.report()


def _authenticator(settings: GatewaySettings, metrics: GatewayMetrics) -> Authenticator | None:
    if not settings.auth_enabled:
        return None
    if not settings.api_keys_file:
        raise ValueError("PRODSEG_AUTH_ENABLED is on but PRODSEG_API_KEYS_FILE names no key store")
    return Authenticator(settings.api_keys_file, metrics.registry)


def _drift_monitors(settings: GatewaySettings, catalog: ModelCatalog, metrics: GatewayMetrics) -> dict:
    """A drift monitor per served model whose served version has a drift reference."""
    monitors = {}
    if not settings.drift_enabled:
        return monitors
    for name in catalog.contracts:
        published, served = model_versions(name, settings.model_repository, settings.triton_config_name)
        if not served:
            continue
        monitor = DriftMonitor.for_model(
            name,
            served[-1],
            metrics.registry,
            settings.model_repository,
            window=settings.drift_window,
            sample_every=settings.drift_sample_every,
            evaluate_every_s=settings.drift_evaluate_every_s,
        )
        if monitor is not None:
            monitors[name] = monitor
    return monitors


def drift_summary(prediction, num_classes: int) -> dict:
    """The plain output summary ``clients.drift`` takes, from a typed prediction (cheap enough for
    the request path)."""
    if isinstance(prediction, Segmentation):
        mask = prediction.mask[::4, ::4]  # shares from every 16th pixel: the same to 3 decimals
        counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
        return {"class_shares": (counts / mask.size).tolist()}
    if isinstance(prediction, Detections):
        return {"count": len(prediction), "class_ids": prediction.class_id.tolist()}
    return {"class_id": prediction.class_id, "confidence": prediction.confidence}


def _add_retrain_routes(app: FastAPI, name: str, retrainer: Retrainer) -> None:
    base, tags = f"/v1/models/{name}/retrain", [name]

    @app.post(
        base,
        status_code=202,
        response_model=RetrainStatus,
        responses={202: {"description": "started"}, **errors(409, 422, 502)},
        summary=f"{name}: retrain now (one run at a time; never promotes to production)",
        tags=tags,
    )
    async def retrain_now() -> JSONResponse:
        await asyncio.to_thread(retrainer.start, name, "manual")
        return JSONResponse(retrainer.status(name), status_code=202)

    @app.get(
        base, response_model=RetrainStatus, summary=f"{name}: the retrain policy and last run", tags=tags
    )
    async def retrain_status() -> dict:
        return retrainer.status(name)


def _add_ab_routes(app: FastAPI, name: str, contract, catalog: ModelCatalog, ab_tests: ABTests) -> None:
    """Start, report and stop an A/B test between versions Triton serves of one model."""
    base, tags = f"/v1/models/{name}/ab", [name]

    @app.put(
        base,
        response_model=ABReport,
        responses=errors(400, 422),
        summary=f"{name}: start an A/B test (weights per version, summing to 100)",
        tags=tags,
    )
    async def start_ab(body: ABStart) -> dict:
        loaded = await catalog.get(name).client.served_versions()
        ab_tests.start(name, body.weights, loaded)
        return ab_tests.report(name, contract.labels.names)

    @app.get(
        base, response_model=ABReport, responses=errors(404), summary=f"{name}: the A/B report", tags=tags
    )
    async def report_ab() -> dict:
        return ab_tests.report(name, contract.labels.names)

    @app.delete(
        base, response_model=ABReport, responses=errors(404), summary=f"{name}: stop the A/B test", tags=tags
    )
    async def stop_ab() -> dict:
        report = ab_tests.report(name, contract.labels.names)
        ab_tests.stop(name)
        return report


def _multipart(description: str, max_files: int, many: bool) -> dict[str, Any]:
    """A multipart body with a part 'file' (or several), for the OpenAPI document: the routes parse the
    stream themselves (gateway.uploads), so FastAPI cannot infer it."""
    video = "video" in description
    file_schema = {"type": "string", "format": "binary"}
    schema = (
        {"type": "array", "items": file_schema, "minItems": 1, "maxItems": max_files} if many else file_schema
    )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {"file": schema}},
                    "encoding": {"file": {"contentType": VIDEO_TYPES if video else IMAGE_TYPES}},
                }
            },
            "description": description,
        }
    }


def _image_responses(task: Task | None = None) -> dict:
    json_result = {"model": ImagePredictions, "description": "one result per image, in image pixels"}
    if task not in (None, Task.SEGMENTATION):
        return {200: json_result, **errors(400, 413, 415, 422, 502, 503)}
    png = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
    return {
        200: json_result
        | {
            "description": "format=png (default) and one image: a PNG of class ids at the image's size "
            "(header X-Labels names them); format=json: RLE masks per image",
            "content": png,
        },
        **errors(400, 404, 413, 415, 422, 502, 503),
    }


def _video_upload() -> dict:
    return {
        "responses": {
            202: {"model": JobAccepted, "description": "the job was queued"},
            **errors(400, 404, 413, 415, 422),
        },
        "openapi_extra": _multipart("a video (MP4, MOV, MKV, WebM, AVI...) in a part 'file'", 1, many=False),
        "status_code": 202,
        "response_model": JobAccepted,
    }


def _artifact_responses(artifacts: tuple[str, ...]) -> dict:
    content = {ARTIFACT_TYPES[name]: {"schema": {"type": "string", "format": "binary"}} for name in artifacts}
    return {200: {"description": "the artefact", "content": content}, **errors(404, 409)}


async def endpoint_health(endpoints: str) -> dict[str, bool]:
    """Each Triton address on its own: is it up and ready? (names the ones that are not)"""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    async def ready(url: str) -> bool:
        client = grpcclient.InferenceServerClient(url)
        try:
            return await client.is_server_ready(client_timeout=2)
        except InferenceServerException:
            return False
        finally:
            await client.close()

    urls = endpoint_list(endpoints)
    return dict(zip(urls, await asyncio.gather(*(ready(url) for url in urls)), strict=True))


def inference_error(error: InferenceError) -> ApiError:
    """502 when Triton refused the request; 503 + Retry-After when no replica could be reached."""
    if isinstance(error, TritonUnavailableError):
        return ApiError(503, "triton_unavailable", str(error), {"Retry-After": "5"})
    return ApiError(502, "inference_failed", str(error))


def _decode(upload: StoredUpload, max_pixels: int) -> tuple[np.ndarray, bytes]:
    """The upload as an RGB frame, and its bytes as sent (kept for feedback by prediction id)."""
    data = upload.path.read_bytes()
    try:
        return decode_image(data, max_pixels), data
    except ImageError as error:
        status = 413 if error.code == "image_too_large" else 415
        raise ApiError(status, error.code, f"{upload.filename or 'the upload'}: {error}") from error


def _result_json(
    result: FrameResult, filename: str, shape: tuple[int, ...], served: ServedModel, confidence: float | None
) -> dict:
    prediction = result.prediction
    if confidence is not None and not isinstance(prediction, Segmentation):
        prediction = prediction.with_min_confidence(confidence)
    return {"filename": filename, "height": shape[0], "width": shape[1]} | prediction.to_json(
        served.contract.labels
    )


__all__ = ["create_app", "ErrorBody"]
