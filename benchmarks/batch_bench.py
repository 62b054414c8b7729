"""Batch throughput: images/s of `prodseg batch run` vs the bare engine on the same images, in one run.

    .venv/bin/python -m benchmarks.batch_bench [--model returns_classifier] [--images 400]

The batch job is the real command (a subprocess, checkpointing, CSV/JSONL, decode, gRPC to the
embedded Triton); its rate is the one it reports in summary.json (from its first request to its
last commit, so Python's start-up is not counted). The bare engine is ``prodseg.engine.load_engine``
(the runner Triton serves) at batch 1 on the same images, decoded and resized beforehand: the
ceiling the issue names; and at the job's own images per request (a small model's batch 1 is mostly
per-call overhead, so that one is the fairer ceiling). The issue's target: batch / bare >= 0.8.
``measure_batch`` is what the suite calls; the main adds an entry per model to
benchmarks/results/batch.json. On a machine shared with other work, read the numbers as indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from clients.atomic import write_text
from clients.contract import ModelContract, Task, default_repository
from clients.images import ImageError, decode_image
from clients.repository import latest_version
from prodseg.batch import frames_per_request_for, read_input
from prodseg.engine import load_engine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "batch.json"


def measure_batch(
    triton_url: str,
    model: str,
    images_dir: Path,
    work_dir: Path,
    max_in_flight: int = 4,
    frames_per_request: int = 0,
    repository: Path | None = None,
) -> dict:
    """Run the batch command over ``images_dir`` into a fresh folder under ``work_dir``, then the bare
    engine (batch 1) over the same images; both rates and their ratio."""
    output = Path(work_dir) / f"batch-{model}-{time.time_ns()}"
    command = [
        sys.executable, "-m", "prodseg.cli", "batch", "run", "--model", model, "--triton", triton_url,
        "--max-in-flight", str(max_in_flight), "--frames-per-request", str(frames_per_request),
        str(images_dir), str(output),
    ]  # fmt: skip
    if repository:
        command += ["--repository", str(repository)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall_s = time.perf_counter() - started
    summary = json.loads((output / "summary.json").read_text())

    contract = ModelContract.load(model, repository)
    frames = []
    for path in read_input(Path(images_dir)).items.values():
        try:
            frames.append(contract.to_model_input(decode_image(path.read_bytes())))
        except ImageError:
            continue
    engine = load_engine(model, repository)
    per_request = frames_per_request_for(contract, frames_per_request)
    bare = _engine_rate(engine, frames, 1)
    # Also at the batch job's own request size: for a small model, batch 1 is dominated by per-call
    # overhead, so this is the fairer ceiling when the job sends many images per request.
    bare_batched = _engine_rate(engine, frames, per_request)
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
        "bare_engine_batched_images_per_s": round(bare_batched, 2),
        "ratio_to_bare_batched": round(summary["images_per_s"] / bare_batched, 3),
        "max_in_flight": max_in_flight,
        "frames_per_request": per_request,
    }


def _engine_rate(engine, frames: list[np.ndarray], batch_size: int) -> float:
    """Images/s of ``engine`` over ``frames`` in batches of ``batch_size`` (after a warm-up)."""
    batches = [np.stack(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)]
    for batch in batches[:3]:  # warm-up: first inferences compile kernels
        engine(batch)
    started = time.perf_counter()
    for batch in batches:
        engine(batch)
    return len(frames) / (time.perf_counter() - started)


def write_bench_images(folder: Path, count: int, contract: ModelContract, seed: int = 0) -> None:
    """``count`` JPEGs at the model's input size. A detector gets generated scenes of people (its
    output, and so the job's JSON, grows with what it finds: noise made it report ~65 boxes an
    image); for the other tasks the cost does not depend on what the images show."""
    from datagen.faces import render_faces, scene_seed

    rng = np.random.default_rng(seed)
    height, width = contract.input_size
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    for i in range(count):
        if contract.task == Task.DETECTION:
            image = render_faces(scene_seed("test", i, seed), height, width, split="test").image
        else:
            base = ramp * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 20, (height, width, 3))
            image = np.clip(base, 0, 255).astype(np.uint8)
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.circle(image, centre, height // 4, (255, 0, 0), -1)
        path = folder / f"part{i % 10}" / f"image{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())


def main(argv: list[str] | None = None) -> None:
    from prodseg.triton_server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: returns_classifier if published, else shelf")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--frames-per-request", type=int, default=0, help="0: by image size")
    parser.add_argument(
        "--onnx", type=Path, help="serve this model.onnx as version 1 of --model (a model not yet published)"
    )
    args = parser.parse_args(argv)
    model = args.model or _fastest_published()
    with tempfile.TemporaryDirectory() as work:
        repository = _repository_with(model, args.onnx, Path(work) / "repository") if args.onnx else None
        contract = ModelContract.load(model, repository)
        images = Path(work) / "images"
        write_bench_images(images, args.images, contract)
        with TritonServer(repository=repository or default_repository(), models=(model,)) as triton:
            result = measure_batch(
                triton.grpc_url,
                model,
                images,
                Path(work),
                args.max_in_flight,
                args.frames_per_request,
                repository,
            )
    if args.onnx:
        result["onnx"] = str(args.onnx)
    result |= {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "indicative: the machine was shared with other work (see load_average_1m)",
    }
    # One entry per model, so runs for several models accumulate in the one file.
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = {name: entry for name, entry in results.items() if isinstance(entry, dict) and "model" in entry}
    results[model] = result
    write_text(RESULTS, json.dumps(results, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _repository_with(model: str, onnx: Path, repository: Path) -> Path:
    """A repository holding only ``model``'s folder from this checkout, with ``onnx`` as version 1."""
    source = default_repository()
    repository.mkdir(parents=True)
    shutil.copy2(source / "onnx_runner.py", repository / "onnx_runner.py")
    shutil.copytree(
        source / model, repository / model, symlinks=True, ignore=shutil.ignore_patterns("[0-9]*")
    )
    version = repository / model / "1"
    version.mkdir()
    shutil.copy2(onnx, version / "model.onnx")
    (version / "model.py").symlink_to("../model.py")
    return repository


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
