"""Gateway settings, from ``PRODSEG_*`` environment variables (the Helm chart sets the same names)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clients.contract import CPU_CONFIG, default_repository
from clients.images import DEFAULT_MAX_PIXELS


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PRODSEG_{name}", default)


def _flag(name: str, default: str) -> bool:
    return _env(name, default).lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class GatewaySettings:
    triton_grpc_url: str = field(default_factory=lambda: _env("TRITON_GRPC_URL", "127.0.0.1:8001"))
    # Where the model contracts come from (the same repository Triton serves), and which models to
    # serve: every model of the repository unless PRODSEG_MODELS lists some (comma-separated).
    model_repository: Path = field(default_factory=default_repository)
    models: tuple[str, ...] = field(
        default_factory=lambda: tuple(m.strip() for m in _env("MODELS", "").split(",") if m.strip())
    )
    # The Triton config variant in use (configs/<name>.pbtxt), for the versions it serves.
    triton_config_name: str = field(default_factory=lambda: _env("TRITON_CONFIG_NAME", CPU_CONFIG))
    data_dir: Path = field(default_factory=lambda: Path(_env("GATEWAY_DATA_DIR", "out/gateway")))
    max_upload_bytes: int = field(default_factory=lambda: int(_env("MAX_UPLOAD_BYTES", str(512 << 20))))
    max_image_bytes: int = field(default_factory=lambda: int(_env("MAX_IMAGE_BYTES", str(20 << 20))))
    max_image_pixels: int = field(
        default_factory=lambda: int(_env("MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS)))
    )
    max_batch_images: int = field(default_factory=lambda: int(_env("MAX_BATCH_IMAGES", "10000")))
    max_images_per_request: int = field(default_factory=lambda: int(_env("MAX_IMAGES_PER_REQUEST", "16")))
    # Requests kept in flight to Triton per job, and frames per request: together they let Triton's
    # dynamic batcher form batches while decode and encode overlap with inference.
    # 3 x 2 measured best on the embedded CPU stack (benchmarks/results/tuning.md): two frames per
    # request halve the per-request cost of the python backend and the gRPC client.
    max_in_flight: int = field(default_factory=lambda: int(_env("MAX_IN_FLIGHT", "3")))
    frames_per_request: int = field(default_factory=lambda: int(_env("FRAMES_PER_REQUEST", "2")))
    chunk_frames: int = field(default_factory=lambda: int(_env("CHUNK_FRAMES", "8")))
    max_concurrent_jobs: int = field(default_factory=lambda: int(_env("MAX_CONCURRENT_JOBS", "2")))
    keep_finished_jobs: int = field(default_factory=lambda: int(_env("KEEP_FINISHED_JOBS", "50")))
    # Predictions kept per model (with their images) so feedback can name one by id.
    kept_predictions: int = field(default_factory=lambda: int(_env("KEPT_PREDICTIONS", "64")))
    # API keys (gateway/auth.py): off by default only on the embedded loopback stack; the chart turns
    # them on. The key store holds salted hashes only (`prodseg keys create`).
    auth_enabled: bool = field(default_factory=lambda: _flag("AUTH_ENABLED", "false"))
    api_keys_file: str = field(default_factory=lambda: _env("API_KEYS_FILE", ""))
    # When set, /metrics is served only on this port (not on the public one).
    metrics_port: int = field(default_factory=lambda: int(_env("METRICS_PORT", "0")))
    # Drift monitoring per model (gateway/drift.py) against each served version's drift_reference.json.
    drift_enabled: bool = field(default_factory=lambda: _flag("DRIFT_ENABLED", "true"))
    drift_window: int = field(default_factory=lambda: int(_env("DRIFT_WINDOW", "100")))
    # One request in N feeds the window: the features cost ~5 ms of CPU each in a worker thread,
    # which on a small node competes with serving (benchmarks/results/suite.json, image_route_drift).
    drift_sample_every: int = field(default_factory=lambda: int(_env("DRIFT_SAMPLE_EVERY", "2")))
    drift_evaluate_every_s: float = field(default_factory=lambda: float(_env("DRIFT_EVALUATE_EVERY_S", "30")))
    # A/B tests set by the deployment (the chart's models[].abTest): {"model": {"1": 50, "2": 50}}.
    # Every replica starts them, so a split holds across replicas; PUT /v1/models/{m}/ab changes one.
    ab_tests: str = field(default_factory=lambda: _env("AB_TESTS", ""))
    # Retrain policies per model (a JSON file, see gateway/retrain.py) and how often they are checked.
    retrain_policies: str = field(default_factory=lambda: _env("RETRAIN_POLICIES", ""))
    retrain_check_s: float = field(default_factory=lambda: float(_env("RETRAIN_CHECK_S", "60")))
    job_retention_s: float = field(default_factory=lambda: float(_env("JOB_RETENTION_S", str(7 * 24 * 3600))))
