"""The demo: a generated shelf video through the embedded stack (Triton + gateway), end to end.

1. render a camera pan along a generated shelf, with ground-truth masks;
2. start Triton and the gateway on 127.0.0.1;
3. upload the video to the gateway, follow the job, download the overlay and the masks;
4. score the masks against the ground truth (mIoU) and time the bare engine on the same frames;
5. write report.json and stop everything that was started.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.evaluation import ConfusionMatrix
from clients.masks import read_mask_archive
from clients.repository import discover
from clients.video import frames, probe
from prodseg.engine import load_engine, measure_fps, measure_triton
from prodseg.predict import download
from prodseg.stack import EmbeddedStack

DEMO_MODEL = "shelf_segmenter"  # the demo renders shelves, so it runs the shelf model


def run_demo(out_dir: Path, num_frames: int = 300, seed: int = 7, console: Console | None = None) -> dict:
    from datagen.shelves import write_pan_video  # the demo's input is generated data

    console = console or Console()
    contract = discover().get(DEMO_MODEL)
    out_dir.mkdir(parents=True, exist_ok=True)
    video, truth = out_dir / "input.mp4", out_dir / "ground_truth_masks.zip"
    with console.status(f"Rendering a {num_frames}-frame shelf video (seed {seed})"):
        write_pan_video(
            video, truth, seed=seed, num_frames=num_frames, height=contract.height, width=contract.width
        )

    started = time.perf_counter()
    with console.status("Starting Triton and the gateway on 127.0.0.1"), EmbeddedStack() as stack:
        console.print(f"Triton gRPC {stack.triton.grpc_url}, gateway {stack.gateway.url}")
        with httpx.Client(base_url=stack.gateway.url, timeout=120) as client:
            server = client_triton_version(stack.triton.http_url)
            job = upload_and_wait(client, contract.model_name, video, num_frames, console)
            for name, url in job["artifacts"].items():
                download(client, url, out_dir / name)
            served_version = client.get(f"/v1/models/{contract.model_name}").json()["versions"]["ready"][-1]
        with console.status("Timing gRPC streaming to Triton (no video decode/encode)"):
            sample = [contract.to_model_input(frame) for frame in itertools.islice(frames(video), 32)]
            # one frame per request, 4 in flight: a live camera's path
            stream = measure_triton(stack.triton.grpc_url, contract, sample, in_flight=4, count=300)
            triton_fps = asyncio.run(stream)["fps"]
    stack_seconds = time.perf_counter() - started

    matrix = ConfusionMatrix(contract.num_classes)
    for predicted, expected in zip(
        read_mask_archive(out_dir / "masks.zip"), read_mask_archive(truth), strict=True
    ):
        matrix.update(predicted, expected)
    with console.status("Timing the bare engine (OpenVINO, batch 1) on the same frames"):
        engine_fps = measure_fps(load_engine(contract.model_name, version=served_version), np.stack(sample))

    report = {
        "frames": job["frames_done"],
        "fps": job["fps"],
        "miou": round(matrix.miou(), 4),
        "iou_per_class": dict(zip(contract.labels.names, np.round(matrix.iou(), 4).tolist(), strict=True)),
        "pixel_accuracy": round(matrix.pixel_accuracy(), 4),
        "triton_version": server,
        "model": {
            "name": contract.model_name,
            "version": served_version,  # what Triton served, not merely the newest folder
            "input": [contract.height, contract.width],
        },
        "job_seconds": job["seconds"],
        "stage_seconds": job["stage_seconds"],
        "engine_fps": round(engine_fps, 2),
        "serving_efficiency": round(job["fps"] / engine_fps, 3),
        "triton_grpc_fps": round(triton_fps, 2),
        "triton_vs_engine": round(triton_fps / engine_fps, 3),
        "stack_seconds": round(stack_seconds, 2),
        "overlay": str(out_dir / "overlay.mp4"),
        "overlay_frames": probe(out_dir / "overlay.mp4").frames,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report, console)
    return report


def client_triton_version(http_url: str) -> str:
    return httpx.get(f"http://{http_url}/v2", timeout=10).json()["version"]


def upload_and_wait(client: httpx.Client, model: str, video: Path, num_frames: int, console: Console) -> dict:
    with open(video, "rb") as file:
        response = client.post(f"/v1/models/{model}/videos", files={"file": (video.name, file, "video/mp4")})
    response.raise_for_status()
    status_url = response.json()["status_url"]
    columns = (
        TextColumn("[bold]Segmenting via gateway"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("job", total=num_frames)
        while True:
            job = client.get(status_url).json()
            progress.update(task, completed=job["frames_done"])
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.25)
    if job["status"] != "succeeded":
        raise RuntimeError(f"video job failed: {job['error']}")
    return job


def print_summary(report: dict, console: Console) -> None:
    table = Table(title="ProdSegmenter demo", show_header=False)
    rows = [
        ("frames", str(report["frames"])),
        ("video job", f"{report['fps']:.1f} frames/s (Triton {report['triton_version']})"),
        ("bare engine (OpenVINO)", f"{report['engine_fps']:.1f} frames/s"),
        ("serving efficiency", f"{report['serving_efficiency']:.2f} (video job / bare engine)"),
        (
            "gRPC -> Triton",
            f"{report['triton_grpc_fps']:.1f} frames/s ({report['triton_vs_engine']:.2f} of bare)",
        ),
        ("mIoU vs ground truth", f"{report['miou']:.3f}"),
        *[(f"  IoU {name}", f"{iou:.3f}") for name, iou in report["iou_per_class"].items()],
        ("overlay", report["overlay"]),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
