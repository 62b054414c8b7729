"""Video jobs for any model: a queue of uploads run through the video pipeline, kept durably.

One gateway replica owns its jobs: their state is in a SQLite store (gateway.store) and their files on
the replica's data volume. Outputs are written atomically, the upload is deleted once the job ends,
and finished jobs are kept until ``keep_finished_jobs`` newer ones exist or ``job_retention_s`` passes.
After a restart, queued jobs start, and running ones start again from their upload (``restarts``
counts it) or fail with the reason.
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
from clients.temporal import REUSE_OFF, ReuseSettings
from gateway.active_learning import ActiveLearner
from gateway.metrics import GatewayMetrics
from gateway.models import ServedModel
from gateway.settings import GatewaySettings
from gateway.store import GatewayStore
from prodseg.batch import BatchSettings, plan_batch, run_batch


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
    restarts: int = 0  # times a gateway restart interrupted it
    kind: str = "video"  # or "batch": images through prodseg.batch, CSV/JSONL out
    reuse: ReuseSettings = REUSE_OFF  # temporal reuse, a video job's option (kept across restarts)
    engine_calls: int | None = None  # frames the model ran on, once the job succeeded

    @classmethod
    def from_stored(cls, values: dict) -> Job:
        return cls(
            **values
            | {
                "artifacts": tuple(values["artifacts"]),
                "directory": Path(values["directory"]),
                "status": JobStatus(values["status"]),
                "reuse": ReuseSettings(**values.get("reuse") or {}),
            }
        )

    @property
    def upload_path(self) -> Path:
        """The video, or the folder of a batch's images."""
        return self.directory / ("input" if self.kind == "batch" else "upload")

    @property
    def route(self) -> str:
        return f"/v1/models/{self.model}/{'batches' if self.kind == 'batch' else 'videos'}/{self.id}"

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
            "restarts": self.restarts,
        }
        if self.kind == "video":
            body["reuse"] = self.reuse.to_dict()
        if self.status == JobStatus.SUCCEEDED and self.engine_calls is not None:
            body["engine_calls"] = self.engine_calls
        if self.status == JobStatus.SUCCEEDED:
            body |= {
                "fps": round(self.fps or 0.0, 2),
                "seconds": round((self.finished_at or 0) - (self.started_at or 0), 3),
                "stage_seconds": {stage: round(s, 3) for stage, s in self.stage_seconds.items()},
                "artifacts": {name: f"{self.route}/{name}" for name in self.artifacts},
            }
        return body


class JobManager:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        store: GatewayStore,
        active_learning: ActiveLearner | None = None,  # offered every video frame's prediction
    ) -> None:
        self.settings = settings
        self.active_learning = active_learning
        self.metrics = metrics
        self.jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._tasks: set[asyncio.Task] = set()
        self.jobs_dir = settings.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = store
        self._last_saved: dict[str, float] = {}

    def recover(self, models: dict[str, ServedModel]) -> None:
        """Take up the jobs a previous process left: resume what can run, fail the rest with a reason."""
        for job in self.store.load(Job):
            self.jobs[job.id] = job
            for partial in job.directory.glob(".*.partial"):  # what a killed process was writing
                partial.unlink()
            if job.finished:
                continue
            if job.model not in models:
                self._fail_at_recovery(job, f"model {job.model!r} is no longer served")
            elif not job.upload_path.exists():
                self._fail_at_recovery(job, "the gateway restarted during the job and its upload is gone")
            else:
                if job.status == JobStatus.RUNNING:
                    job.restarts += 1
                job.status, job.frames_done, job.started_at = JobStatus.QUEUED, 0, None
                self.submit(job, models[job.model])
        known = set(self.jobs)
        for directory in self.jobs_dir.iterdir():  # folders of uploads that never became a job
            if directory.name not in known:
                shutil.rmtree(directory, ignore_errors=True)
        self._forget_old_jobs()

    def _fail_at_recovery(self, job: Job, reason: str) -> None:
        job.status, job.error, job.finished_at = JobStatus.FAILED, reason, time.time()
        _remove(job.upload_path)
        self.store.save(job)

    def new_job_directory(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        directory = self.jobs_dir / job_id
        directory.mkdir()
        return job_id, directory

    def submit(self, job: Job, model: ServedModel) -> None:
        self.jobs[job.id] = job
        self.store.save(job)  # durable before the client hears 202
        self.metrics.jobs_in_progress.labels(job.model).inc()
        task = asyncio.create_task(self._run(job, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _progress(self, job: Job, frames: int) -> None:
        job.frames_done = frames
        now = time.monotonic()
        if now - self._last_saved.get(job.id, 0.0) >= 0.5:  # bounded write rate, however fast the job
            self._last_saved[job.id] = now
            self.store.save(job)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def delete(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        self._last_saved.pop(job.id, None)
        self.store.delete(job.id)
        shutil.rmtree(job.directory, ignore_errors=True)

    async def _run(self, job: Job, model: ServedModel) -> None:
        try:
            async with self._slots:
                job.status, job.started_at = JobStatus.RUNNING, time.time()
                self.store.save(job)
                if job.kind == "batch":
                    await self._run_batch(job)
                else:
                    await self._run_video(job, model)
            job.status = JobStatus.SUCCEEDED
        except asyncio.CancelledError:
            # Shutting down: the stored job stays queued/running, so the next process takes it up.
            self.metrics.jobs_in_progress.labels(job.model).dec()
            raise
        except Exception as error:  # the job fails; the gateway stays up
            job.status, job.error = JobStatus.FAILED, f"{error.__class__.__name__}: {error}"
        self._finish(job)

    async def _run_video(self, job: Job, model: ServedModel) -> None:
        learner = self.active_learning
        stats = await process_video(
            job.upload_path,
            job.directory,
            model.client,
            chunk_size=self.settings.chunk_frames,
            on_progress=lambda frames: self._progress(job, frames),
            observe=lambda stage, seconds, frames: self.metrics.observe_stage(
                job.model, stage, seconds, frames
            ),
            on_result=learner.watch_video(model.contract, job.id, job.filename) if learner else None,
            reuse=job.reuse,
        )
        job.fps, job.stage_seconds, job.frames_done = stats.fps, stats.stage_seconds, stats.frames
        job.engine_calls = stats.engine_calls
        job.frames_total = stats.frames
        self.metrics.frames.labels(job.model, "video").inc(stats.frames)
        self.metrics.job_fps.labels(job.model).observe(stats.fps)

    async def _run_batch(self, job: Job) -> None:
        """prodseg.batch over the uploaded images: checkpointed, so a restart resumes it."""
        settings = BatchSettings(
            job.model,
            job.upload_path,
            job.directory,
            self.settings.triton_grpc_url,
            repository=self.settings.model_repository,
        )
        plan = await asyncio.to_thread(plan_batch, settings)
        done = len(plan.done)
        job.frames_total = len(plan.shard_items)

        def progress(items: int) -> None:
            nonlocal done
            done += items
            self._progress(job, done)

        report = await run_batch(plan, progress)
        job.frames_done, job.fps = report.done_total, report.images_per_s
        self.metrics.frames.labels(job.model, "batch").inc(report.processed + report.failed)

    def _finish(self, job: Job) -> None:
        job.finished_at = time.time()
        _remove(job.upload_path)
        self.store.save(job)
        self.metrics.jobs_in_progress.labels(job.model).dec()
        self.metrics.jobs.labels(job.model, job.status.value).inc()
        self._forget_old_jobs()

    def _forget_old_jobs(self) -> None:
        finished = sorted((j for j in self.jobs.values() if j.finished), key=lambda j: j.finished_at or 0)
        expired = time.time() - self.settings.job_retention_s
        for index, job in enumerate(finished):
            if index < len(finished) - self.settings.keep_finished_jobs or (job.finished_at or 0) < expired:
                self.delete(job)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
