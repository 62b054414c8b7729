"""Batch throughput: images/s of `prodseg batch run` vs the bare engine on the same images, in one run.

    .venv/bin/python -m benchmarks.batch_bench [--model returns_classifier] [--images 400]

The batch job is the real command (a subprocess, checkpointing, CSV/JSONL, decode, gRPC to the
embedded Triton); its rate is the one it reports in summary.json (from its first request to its
last commit, so Python's start-up is not counted). The bare engine is ``prodseg.engine.load_engine``
(the runner Triton serves) at batch 1 on the same images, decoded and resized beforehand: the
ceiling. The issue's target: batch / bare >= 0.8. ``measure_batch`` is what the suite calls; the
main writes benchmarks/results/batch.json. On a machine shared with other work, read the numbers
as indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from clients.atomic import write_text
from clients.contract import ModelContract
from clients.images import ImageError, decode_image
from clients.repository import latest_version
from prodseg.batch import read_input
from prodseg.engine import load_engine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "batch.json"


def measure_batch(
    triton_url: str,
    model: str,
    images_dir: Path,
    work_dir: Path,
    max_in_flight: int = 4,
    frames_per_request: int = 4,
) -> dict:
    """Run the batch command over ``images_dir`` into a fresh folder under ``work_dir``, then the bare
    engine (batch 1) over the same images; both rates and their ratio."""
    output = Path(work_dir) / f"batch-{model}-{time.time_ns()}"
    command = [
        sys.executable, "-m", "prodseg.cli", "batch", "run", "--model", model, "--triton", triton_url,
        "--max-in-flight", str(max_in_flight), "--frames-per-request", str(frames_per_request),
        str(images_dir), str(output),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall_s = time.perf_counter() - started
    summary = json.loads((output / "summary.json").read_text())

    contract = ModelContract.load(model)
    frames = []
    for path in read_input(Path(images_dir)).items.values():
        try:
            frames.append(contract.to_model_input(decode_image(path.read_bytes())))
        except ImageError:
            continue
    engine = load_engine(model)
    for frame in frames[:5]:  # warm-up: first inferences compile kernels
        engine(frame[None])
    started = time.perf_counter()
    for frame in frames:
        engine(frame[None])
    bare_s = time.perf_counter() - started
    bare = len(frames) / bare_s
    return {
        "model": model,
        "version": summary["version"],
        "images": summary["total"],
        "failed": summary["failed_total"],
        "batch_images_per_s": summary["images_per_s"],
        "batch_seconds": round(summary["seconds"], 3),
        "batch_command_wall_s": round(wall_s, 3),  # with Python start-up and imports
        "bare_engine_images_per_s": round(bare, 2),
        "ratio_to_bare": round(summary["images_per_s"] / bare, 3),
        "max_in_flight": max_in_flight,
        "frames_per_request": frames_per_request,
    }


def write_bench_images(folder: Path, count: int, contract: ModelContract, seed: int = 0) -> None:
    """``count`` JPEGs at the model's input size (throughput does not depend on what they show)."""
    rng = np.random.default_rng(seed)
    height, width = contract.input_size
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    for i in range(count):
        base = ramp * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 20, (height, width, 3))
        image = np.clip(base, 0, 255).astype(np.uint8)
        cv2.circle(image, (int(rng.integers(width)), int(rng.integers(height))), height // 4, (255, 0, 0), -1)
        path = folder / f"part{i % 10}" / f"image{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())


def main(argv: list[str] | None = None) -> None:
    from prodseg.triton_server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: returns_classifier if published, else shelf")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--frames-per-request", type=int, default=4)
    args = parser.parse_args(argv)
    model = args.model or _fastest_published()
    contract = ModelContract.load(model)
    with tempfile.TemporaryDirectory() as work, TritonServer(models=(model,)) as triton:
        images = Path(work) / "images"
        write_bench_images(images, args.images, contract)
        result = measure_batch(
            triton.grpc_url, model, images, Path(work), args.max_in_flight, args.frames_per_request
        )
    result |= {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "indicative: the machine was shared with other work (see load_average_1m)",
    }
    write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _fastest_published() -> str:
    for name in ("returns_classifier", "engagement_classifier"):
        try:
            latest_version(name)
            return name
        except FileNotFoundError:
            continue
    return "shelf_segmenter"


if __name__ == "__main__":
    main()
