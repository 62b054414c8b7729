"""The gateway's HTTP API: every model of the repository behind one set of routes.

GET  /v1/models                                   the models: task, labels, input size, versions, ready
GET  /v1/models/{model}                           one of them
POST /v1/models/{model}/images                    one or more images (parts "file") -> predictions
POST /v1/models/{model}/videos                    a video (part "file") -> 202 job
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
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from clients.contract import Task
from clients.images import ImageError, decode_image
from clients.masks import encode_mask_png
from clients.pipeline import ARTIFACTS
from clients.results import FrameResult, Segmentation
from clients.triton_client import InferenceError
from clients.video import CorruptVideoError, VideoError, probe
from gateway.errors import ApiError, ErrorBody, error_response, errors, install_error_handlers
from gateway.jobs import Job, JobManager, JobStatus
from gateway.metrics import GatewayMetrics
from gateway.models import ModelCatalog, ServedModel
from gateway.settings import GatewaySettings
from gateway.uploads import StoredUpload, receive_files

ModelName = Annotated[str, PathParam(description="a model of the repository (GET /v1/models lists them)")]
JobId = Annotated[str, PathParam(description="the id returned when the video was uploaded")]

ArtifactName = Literal["overlay.mp4", "masks.zip", "timeline.jsonl", "detections.jsonl", "predictions.jsonl"]
ARTIFACT_TYPES = {
    "overlay.mp4": "video/mp4",
    "masks.zip": "application/zip",
    "timeline.jsonl": "application/x-ndjson",
    "detections.jsonl": "application/x-ndjson",
    "predictions.jsonl": "application/x-ndjson",
}


def _multipart(description: str, many: bool) -> dict[str, Any]:
    file_schema = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema, "minItems": 1} if many else file_schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {"file": schema}},
                    "encoding": {"file": {"contentType": "application/octet-stream"}},
                }
            },
            "description": description,
        }
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
    filename: str
    width: int
    height: int
    task: str


class ImagePredictions(BaseModel):
    model: str
    results: list[ImageResult]


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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog.open_clients()  # gRPC channels must be created inside the server's event loop
        app.state.jobs = JobManager(settings, metrics)
        yield
        await app.state.jobs.shutdown()
        await catalog.close()

    app = FastAPI(
        title="ProdSegmenter gateway",
        version="0.2.0",
        description="Vision models on NVIDIA Triton: segmentation, detection and classification.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

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

    # ---- models -------------------------------------------------------------------------------------

    @app.get("/v1/models", response_model=ModelList, summary="Every served model")
    async def list_models() -> dict:
        described = await asyncio.gather(*(catalog.describe(m) for m in catalog.models.values()))
        return {"models": described, "default_model": catalog.default_model, "unavailable": catalog.errors}

    @app.get("/v1/models/{model}", response_model=ModelInfo, responses=errors(404), summary="One model")
    async def get_model(model: ModelName) -> dict:
        return await catalog.describe(catalog.get(model))

    # ---- images -------------------------------------------------------------------------------------

    image_responses = {
        200: {
            "description": "Segmentation with format=png and one image: a PNG of class ids at the image's "
            "size (header X-Labels names them). Otherwise JSON: one result per image, in image pixels.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "model": ImagePredictions,
        },
        **errors(400, 404, 413, 415, 422, 502, 503),
    }

    @app.post(
        "/v1/models/{model}/images",
        responses=image_responses,
        openapi_extra=_multipart("one or more images (PNG, JPEG, BMP, WebP), each in a part 'file'", True),
        summary="Predict on one or several images",
    )
    async def predict_images(
        request: Request,
        model: ModelName,
        format: Annotated[
            str,
            Query(
                pattern="^(png|json)$",
                description="segmentation only: 'png' (class ids, one image) or 'json' (RLE masks)",
            ),
        ] = "",
        confidence: Annotated[
            float | None, Query(ge=0.0, le=1.0, description="detection only: minimum score, 0..1")
        ] = None,
    ) -> Response:
        served = catalog.get(model)
        return await _predict(request, served, format, confidence)

    @app.post(
        "/v1/frames",
        responses=image_responses,
        openapi_extra=_multipart("one image in a part 'file'", False),
        summary="The default model on one image (alias of /v1/models/{default}/images)",
    )
    async def predict_frame(request: Request) -> Response:
        return await _predict(request, catalog.default(), "", None, max_files=1)

    async def _predict(
        request: Request, served: ServedModel, format: str, confidence: float | None, max_files: int = 0
    ) -> Response:
        contract = served.contract
        if format and contract.task != Task.SEGMENTATION:
            raise ApiError(
                422, "invalid_option", f"'format' applies to segmentation; {served.name} does {contract.task}"
            )
        if confidence is not None and contract.task != Task.DETECTION:
            raise ApiError(
                422,
                "invalid_option",
                f"'confidence' applies to detection; {served.name} does {contract.task}",
            )
        directory = settings.data_dir / "images" / uuid.uuid4().hex
        limit = max_files or settings.max_images_per_request
        try:
            uploads = await receive_files(request, directory, settings.max_image_bytes * limit, limit)
            started = time.perf_counter()
            frames = [
                await asyncio.to_thread(_decode, upload, settings.max_image_pixels) for upload in uploads
            ]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        decoded = time.perf_counter()
        metrics.request_stage_seconds.labels(served.name, "decode").observe(decoded - started)
        try:
            results = await served.client.predict_images(frames)
        except InferenceError as error:
            raise ApiError(502, "inference_failed", str(error)) from error
        inferred = time.perf_counter()
        metrics.request_stage_seconds.labels(served.name, "infer").observe(inferred - decoded)
        metrics.frames.labels(served.name, "image").inc(len(results))
        headers = {"X-Inference-Ms": f"{(inferred - decoded) * 1000:.2f}"}
        if contract.task == Task.SEGMENTATION and len(results) == 1 and format != "json":
            headers["X-Labels"] = ",".join(contract.labels.names)
            return Response(encode_mask_png(results[0].mask), media_type="image/png", headers=headers)
        if format == "png":
            raise ApiError(422, "invalid_option", "format=png takes one image; use format=json for several")
        body = {
            "model": served.name,
            "results": [
                _result_json(result, upload.filename, frame.shape, served, confidence)
                for result, upload, frame in zip(results, uploads, frames, strict=True)
            ],
        }
        metrics.request_stage_seconds.labels(served.name, "postprocess").observe(
            time.perf_counter() - inferred
        )
        return JSONResponse(body, headers=headers)

    # ---- videos -------------------------------------------------------------------------------------

    video_upload = {
        "responses": {
            202: {"model": JobAccepted, "description": "the job was queued"},
            **errors(400, 404, 413, 415, 422),
        },
        "openapi_extra": _multipart("a video (MP4, MOV, MKV, WebM, AVI...) in a part 'file'", False),
        "status_code": 202,
        "response_model": JobAccepted,
    }

    @app.post("/v1/models/{model}/videos", summary="Run a video through a model (a job)", **video_upload)
    async def upload_video(request: Request, model: ModelName) -> JSONResponse:
        return await _upload_video(request, catalog.get(model), prefix=f"/v1/models/{model}/videos")

    @app.post("/v1/videos", summary="The default model on a video (alias)", **video_upload)
    async def upload_default_video(request: Request) -> JSONResponse:
        return await _upload_video(request, catalog.default(), prefix="/v1/videos")

    async def _upload_video(request: Request, served: ServedModel, prefix: str) -> JSONResponse:
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
        jobs.submit(job, served)
        url = f"{prefix}/{job_id}"
        return JSONResponse(
            {"id": job_id, "model": served.name, "status": job.status.value, "status_url": url},
            status_code=202,
            headers={"Location": url},
        )

    def job_of(model: str | None, job_id: str) -> Job:
        job = app.state.jobs.get(job_id)
        if job is None or (model is not None and job.model != model):
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

    artifact_responses = {
        200: {
            "description": "the artifact",
            "content": {t: {} for t in sorted(set(ARTIFACT_TYPES.values()))},
        },
        **errors(404, 409),
    }

    @app.get("/v1/models/{model}/videos/{job_id}", response_model=JobInfo, responses=errors(404))
    async def video_status(model: ModelName, job_id: JobId) -> dict:
        return job_of(model, job_id).to_json()

    @app.get(
        "/v1/models/{model}/videos/{job_id}/{artifact}",
        responses=artifact_responses,
        response_class=FileResponse,
        summary="Download a finished job's artifact",
    )
    async def video_artifact(
        model: ModelName,
        job_id: JobId,
        artifact: Annotated[ArtifactName, PathParam(description="one of the job's artifacts")],
    ) -> FileResponse:
        return artifact_file(job_of(model, job_id), artifact)

    @app.delete(
        "/v1/models/{model}/videos/{job_id}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "deleted"}, **errors(404, 409)},
    )
    async def delete_video(model: ModelName, job_id: JobId) -> Response:
        return delete_job(job_of(model, job_id))

    @app.get(
        "/v1/videos/{job_id}", response_model=JobInfo, responses=errors(404), summary="Job status (alias)"
    )
    async def default_video_status(job_id: JobId) -> dict:
        return job_of(None, job_id).to_json()

    @app.get("/v1/videos/{job_id}/overlay.mp4", response_class=FileResponse, responses=artifact_responses)
    async def default_video_overlay(job_id: JobId) -> FileResponse:
        return artifact_file(job_of(None, job_id), "overlay.mp4")

    @app.get("/v1/videos/{job_id}/masks.zip", response_class=FileResponse, responses=artifact_responses)
    async def default_video_masks(job_id: JobId) -> FileResponse:
        return artifact_file(job_of(None, job_id), "masks.zip")

    @app.delete(
        "/v1/videos/{job_id}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "deleted"}, **errors(404, 409)},
    )
    async def delete_default_video(job_id: JobId) -> Response:
        return delete_job(job_of(None, job_id))

    # ---- operations ---------------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses=errors(503))
    async def readyz() -> JSONResponse:
        ready = dict(
            zip(
                catalog.models,
                await asyncio.gather(*(m.client.is_ready() for m in catalog.models.values())),
                strict=True,
            )
        )
        if ready and all(ready.values()):
            return JSONResponse({"status": "ready", "models": ready, "unavailable": catalog.errors})
        waiting = [name for name, ok in ready.items() if not ok] or ["(no model configured)"]
        message = f"Triton at {settings.triton_grpc_url}: not ready for {', '.join(waiting)}"
        return error_response(503, "triton_not_ready", message)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _decode(upload: StoredUpload, max_pixels: int):
    try:
        return decode_image(upload.path.read_bytes(), max_pixels)
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
