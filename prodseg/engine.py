"""The bare engine, outside Triton: the same ``OnnxEngine`` the served ``model.py`` runs.

Loaded from the model repository by file path, so its numbers are the ceiling that serving
efficiency is measured against (Triton frames/s / bare engine frames/s).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from clients.contract import ModelContract, default_repository, served_engine
from clients.repository import latest_version
from clients.triton_client import TritonModelClient


def load_engine(
    model_name: str,
    repository: Path | None = None,
    version: int | None = None,
    engine: str = "openvino",
    threads: int = 0,
    precision: str | None = None,
):
    """An ``OnnxEngine`` for one version of a model (the latest by default): the served runner's own.
    ``precision``: OpenVINO's; None: what the model's served cpu config says."""
    repository = Path(repository or default_repository())
    if precision is None:
        precision = served_engine(repository, model_name).precision
    version = version or latest_version(model_name, repository)
    spec = importlib.util.spec_from_file_location("prodseg_onnx_runner", repository / "onnx_runner.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner.OnnxEngine(
        repository / model_name / str(version) / "model.onnx",
        engine=engine,
        threads=threads,
        precision=precision,
    )


def measure_fps(engine, images: np.ndarray, seconds: float = 5.0, warmup: int = 5) -> float:
    """Frames/s of ``engine`` on batch-1 requests cycling over ``images`` ([N, H, W, 3])."""
    for i in range(warmup):
        engine(images[i % len(images)][None])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        engine(images[done % len(images)][None])
        done += 1
    return done / (time.perf_counter() - started)


async def measure_triton(
    url: str,
    contract: ModelContract,
    sample: list[np.ndarray],
    in_flight: int,
    count: int,
    frames_per_request: int = 1,
) -> dict:
    """Frames/s and request latency of ``count`` frames streamed to Triton over gRPC with a window of
    ``in_flight`` requests of ``frames_per_request`` frames (the path a client takes, no video)."""
    latencies = []
    async with TritonModelClient(url, contract, in_flight, frames_per_request) as client:
        started = time.perf_counter()
        async for result in client.stream(sample[i % len(sample)] for i in range(count)):
            latencies.append(result.timings["infer"])
        seconds = time.perf_counter() - started
    return {
        "fps": count / seconds,
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
    }
