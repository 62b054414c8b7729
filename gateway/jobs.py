"""Video jobs for any model: an in-process queue of uploads run through the video pipeline.

One gateway replica owns its jobs (state is in memory; outputs on its data volume). Outputs are
written atomically, the upload is deleted once the job ends, and only the newest finished jobs are
kept on disk.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from clients.pipeline import process_video
from gateway.metrics import GatewayMetrics
from gateway.models import ServedModel
from gateway.settings import GatewaySettings


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Job:
    id: str
    model: str
    artifacts: tuple[str, ...]
    directory: Path
    filename: str
    upload_bytes: int
    frames_total: int  # from the container; 0 when unknown
    status: JobStatus = JobStatus.QUEUED
    frames_done: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    fps: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def upload_path(self) -> Path:
        return self.directory / "upload"

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)

    def to_json(self) -> dict:
        progress = self.frames_done / self.frames_total if self.frames_total else None
        if self.status == JobStatus.SUCCEEDED:
            progress = 1.0
        body = {
            "id": self.id,
            "model": self.model,
            "status": self.status.value,
            "filename": self.filename,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total or None,
            "progress": None if progress is None else round(min(progress, 1.0), 4),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
        }
        if self.status == JobStatus.SUCCEEDED:
            body |= {
                "fps": round(self.fps or 0.0, 2),
                "seconds": round((self.finished_at or 0) - (self.started_at or 0), 3),
                "stage_seconds": {stage: round(s, 3) for stage, s in self.stage_seconds.items()},
                "artifacts": {
                    name: f"/v1/models/{self.model}/videos/{self.id}/{name}" for name in self.artifacts
                },
            }
        return body


class JobManager:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._tasks: set[asyncio.Task] = set()
        self.jobs_dir = settings.data_dir / "jobs"
        # Job state lives in memory, so anything on disk is from a previous process: clear it.
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def new_job_directory(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        directory = self.jobs_dir / job_id
        directory.mkdir()
        return job_id, directory

    def submit(self, job: Job, model: ServedModel) -> None:
        self.jobs[job.id] = job
        self.metrics.jobs_in_progress.labels(job.model).inc()
        task = asyncio.create_task(self._run(job, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def delete(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        shutil.rmtree(job.directory, ignore_errors=True)

    async def _run(self, job: Job, model: ServedModel) -> None:
        try:
            async with self._slots:
                job.status, job.started_at = JobStatus.RUNNING, time.time()
                stats = await process_video(
                    job.upload_path,
                    job.directory,
                    model.client,
                    chunk_size=self.settings.chunk_frames,
                    on_progress=lambda frames: setattr(job, "frames_done", frames),
                    observe=lambda stage, seconds, frames: self.metrics.observe_stage(
                        job.model, stage, seconds, frames
                    ),
                )
            job.fps, job.stage_seconds, job.frames_done = stats.fps, stats.stage_seconds, stats.frames
            job.frames_total = stats.frames
            job.status = JobStatus.SUCCEEDED
            self.metrics.frames.labels(job.model, "video").inc(stats.frames)
            self.metrics.job_fps.labels(job.model).observe(stats.fps)
        except asyncio.CancelledError:
            job.status, job.error = JobStatus.FAILED, "the gateway shut down during the job"
            raise
        except Exception as error:  # the job fails; the gateway stays up
            job.status, job.error = JobStatus.FAILED, f"{error.__class__.__name__}: {error}"
        finally:
            job.finished_at = time.time()
            job.upload_path.unlink(missing_ok=True)
            self.metrics.jobs_in_progress.labels(job.model).dec()
            self.metrics.jobs.labels(job.model, job.status.value).inc()
            self._forget_old_jobs()

    def _forget_old_jobs(self) -> None:
        finished = sorted((j for j in self.jobs.values() if j.finished), key=lambda j: j.finished_at or 0)
        for job in finished[: max(0, len(finished) - self.settings.keep_finished_jobs)]:
            self.delete(job)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
