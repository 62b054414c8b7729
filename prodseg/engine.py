"""The bare engine, outside Triton: the same ``OnnxEngine`` the served ``model.py`` runs.

Loaded from the model repository by file path, so its numbers are the ceiling that serving
efficiency is measured against (Triton frames/s / bare engine frames/s).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from clients.contract import MODEL_NAME, ModelContract, default_repository
from clients.triton_client import TritonSegmenter


def latest_version(repository: Path | None = None, model_name: str = MODEL_NAME) -> int:
    model_dir = (repository or default_repository()) / model_name
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"{model_dir} has no version directories: run `prodseg model` first")
    return max(versions)


def load_engine(
    repository: Path | None = None,
    version: int | None = None,
    engine: str = "openvino",
    threads: int = 0,
    model_name: str = MODEL_NAME,
):
    """An ``OnnxEngine`` for one version of the model (the latest by default)."""
    model_dir = (repository or default_repository()) / model_name
    version = version or latest_version(repository, model_name)
    spec = importlib.util.spec_from_file_location("shelf_segmenter_runner", model_dir / "model.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner.OnnxEngine(model_dir / str(version) / "model.onnx", engine=engine, threads=threads)


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
    async with TritonSegmenter(url, contract, in_flight, frames_per_request) as segmenter:
        started = time.perf_counter()
        async for result in segmenter.segment(sample[i % len(sample)] for i in range(count)):
            latencies.append(result.timings["infer"])
        seconds = time.perf_counter() - started
    return {
        "fps": count / seconds,
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
    }
