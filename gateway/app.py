"""The gateway's HTTP API.

POST /v1/videos            multipart upload (part "file") -> 202 {"id", "status_url"}
GET  /v1/videos/{id}       status and progress
GET  /v1/videos/{id}/overlay.mp4, /masks.zip   results (409 until the job succeeded)
DELETE /v1/videos/{id}     forget a job and its files
POST /v1/frames            one image (part "file") -> PNG of class ids, same size as the image
GET  /healthz /readyz /metrics
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from contextlib import asynccontextmanager

import cv2
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clients.contract import ModelContract
from clients.masks import encode_mask_png
from clients.triton_client import SegmentationError, TritonSegmenter
from clients.video import CorruptVideoError, VideoError, probe
from gateway.errors import ApiError, error_response, install_error_handlers
from gateway.jobs import Job, JobManager, JobStatus
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.uploads import receive_file


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    contract = ModelContract.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The gRPC channel must be created inside the server's event loop.
        segmenter = TritonSegmenter(
            settings.triton_grpc_url, contract, settings.max_in_flight, settings.frames_per_request
        )
        app.state.segmenter = segmenter
        app.state.jobs = JobManager(settings, segmenter, metrics)
        yield
        await app.state.jobs.shutdown()
        await segmenter.close()

    app = FastAPI(title="ProdSegmenter gateway", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)

    @app.middleware("http")
    async def time_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(
            getattr(route, "path", "unmatched"), request.method, str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    def job_or_404(job_id: str) -> Job:
        job = app.state.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"no video job with id {job_id!r}")
        return job

    @app.post("/v1/videos", status_code=202)
    async def upload_video(request: Request) -> JSONResponse:
        jobs: JobManager = app.state.jobs
        job_id, directory = jobs.new_job_directory()
        try:
            upload = await receive_file(request, directory / "upload", settings.max_upload_bytes)
            info = await asyncio.to_thread(probe, upload.path)
        except VideoError as error:
            jobs_dir_cleanup(directory)
            status = 422 if isinstance(error, CorruptVideoError) else 415
            code = "corrupt_video" if isinstance(error, CorruptVideoError) else "not_a_video"
            raise ApiError(status, code, str(error)) from error
        except BaseException:
            jobs_dir_cleanup(directory)
            raise
        job = Job(job_id, directory, upload.filename, upload.size, info.frames)
        jobs.submit(job)
        return JSONResponse(
            {"id": job_id, "status": job.status.value, "status_url": f"/v1/videos/{job_id}"},
            status_code=202,
            headers={"Location": f"/v1/videos/{job_id}"},
        )

    @app.get("/v1/videos/{job_id}")
    async def video_status(job_id: str) -> dict:
        return job_or_404(job_id).to_json()

    @app.get("/v1/videos/{job_id}/overlay.mp4")
    async def video_overlay(job_id: str) -> FileResponse:
        return FileResponse(finished_output(job_or_404(job_id), "overlay.mp4"), media_type="video/mp4")

    @app.get("/v1/videos/{job_id}/masks.zip")
    async def video_masks(job_id: str) -> FileResponse:
        return FileResponse(finished_output(job_or_404(job_id), "masks.zip"), media_type="application/zip")

    @app.delete("/v1/videos/{job_id}", status_code=204)
    async def delete_video(job_id: str) -> Response:
        job = job_or_404(job_id)
        if not job.finished:
            raise ApiError(409, "job_not_finished", f"job {job_id} is {job.status.value}; wait for it to end")
        app.state.jobs.delete(job)
        return Response(status_code=204)

    @app.post("/v1/frames")
    async def segment_frame(request: Request) -> Response:
        directory = settings.data_dir / "frames" / uuid.uuid4().hex
        try:
            upload = await receive_file(request, directory / "image", settings.max_image_bytes)
            data = np.fromfile(upload.path, dtype=np.uint8)
        finally:
            jobs_dir_cleanup(directory)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ApiError(415, "not_an_image", "the file is not a decodable image (PNG, JPEG, BMP, WebP...)")
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        started = time.perf_counter()
        try:
            result = await app.state.segmenter.segment_image(frame)
        except SegmentationError as error:
            raise ApiError(502, "inference_failed", str(error)) from error
        metrics.frames.labels("frame").inc()
        return Response(
            encode_mask_png(result.mask),
            media_type="image/png",
            headers={
                "X-Inference-Ms": f"{(time.perf_counter() - started) * 1000:.2f}",
                "X-Labels": ",".join(contract.labels.names),
            },
        )

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if await app.state.segmenter.is_ready():
            return JSONResponse({"status": "ready", "model": contract.model_name})
        message = f"Triton at {settings.triton_grpc_url} or model {contract.model_name} is not ready"
        return error_response(503, "triton_not_ready", message)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def finished_output(job: Job, name: str):
    if job.status != JobStatus.SUCCEEDED:
        detail = f": {job.error}" if job.error else ""
        raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status.value}{detail}")
    return job.directory / name


def jobs_dir_cleanup(directory) -> None:
    shutil.rmtree(directory, ignore_errors=True)
