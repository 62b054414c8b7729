"""The gateway's Prometheus metrics, in a registry of its own (so several apps can live in one test).

Every series carries a ``model`` label (empty for routes that serve no model, such as /healthz), in
the style of KServe's per-model stage histograms.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# motion and propagate: temporal reuse (clients/temporal.py), observed only for jobs that turn it on
STAGES = ("decode", "infer", "motion", "propagate", "overlay", "encode")
REQUEST_STAGES = ("decode", "infer", "postprocess")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.frames = Counter(
            "prodseg_gateway_frames", "Frames or images inferred", ["model", "source"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "prodseg_gateway_stage_seconds",
            "Time per frame in each stage of a video job (infer: request round trip per frame)",
            ["model", "stage"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=self.registry,
        )
        self.request_stage_seconds = Histogram(
            "prodseg_gateway_request_stage_seconds",
            "Time per image request in each stage (decode upload, Triton round trip, postprocess)",
            ["model", "stage"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.jobs = Counter(
            "prodseg_gateway_jobs",
            "Video jobs finished, by outcome",
            ["model", "status"],
            registry=self.registry,
        )
        self.jobs_in_progress = Gauge(
            "prodseg_gateway_jobs_in_progress",
            "Video jobs queued or running",
            ["model"],
            registry=self.registry,
        )
        self.job_fps = Histogram(
            "prodseg_gateway_job_fps",
            "Frames per second of finished video jobs",
            ["model"],
            buckets=(5, 10, 20, 30, 45, 60, 90, 120, 240, 480),
            registry=self.registry,
        )
        self.predictions = Counter(
            "prodseg_gateway_predictions",
            "Images predicted, by the model version that made the prediction",
            ["model", "version"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "prodseg_gateway_inference_seconds",
            "Triton round trip of image requests, by model version",
            ["model", "version"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.requests = Histogram(
            "prodseg_gateway_request_seconds",
            "HTTP request latency",
            ["model", "route", "method", "status"],
            registry=self.registry,
        )

    def register_model(self, model: str) -> None:
        """Export a model's series from the start, so dashboards see zeros, not gaps."""
        for stage in STAGES:
            self.stage_seconds.labels(model, stage)
        for stage in REQUEST_STAGES:
            self.request_stage_seconds.labels(model, stage)
        self.jobs_in_progress.labels(model)

    def observe_stage(self, model: str, stage: str, seconds: float, frames: int) -> None:
        """Record a chunk's time as ``frames`` per-frame observations."""
        per_frame = seconds / max(frames, 1)
        child = self.stage_seconds.labels(model, stage)
        for _ in range(frames):
            child.observe(per_frame)
