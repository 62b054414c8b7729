"""The benchmark suite: every serving path side by side, same model, input size and thread budget.

``python -m benchmarks.suite [--repeats 3] [--seconds 6] [--frames 300] [--name suite]``

In one run, with one embedded Triton and one gateway started for it, each repeat measures:
- bare engine, in-process (OpenVINO, ONNX Runtime): the limit for frame inference;
- bare video pipeline, one process (decode, the same engine, overlay, encode): the limit for a job;
- gRPC client -> Triton (dynamic batching) at several windows: requests in flight x frames each;
- the gateway video job end to end (upload, decode, infer via Triton, overlay, encode);
- the seed-style baseline (FastAPI + PyTorch eager, JSON/base64 per frame);
and once: NVIDIA perf_analyzer 2.51 against the same Triton, if installed (make perf-analyzer);
then the video-at-scale figures (``benchmarks/scale.py``: wire, temporal reuse, cameras per replica).
Medians over repeats go to benchmarks/results/<name>.json, <name>.md and <name>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from clients.contract import ModelContract
from clients.overlay import OverlayPainter
from clients.repository import discover, latest_version
from clients.results import Segmentation
from clients.video import VideoSink, frames
from prodseg.engine import load_engine, measure_fps, measure_triton
from prodseg.processes import free_port, http_ok, stop_process_group, wait_until_ready
from prodseg.stack import EmbeddedStack
from prodseg.triton_server import PROJECT_ROOT, TritonServer

RESULTS = Path(__file__).parent / "results"
FLAGSHIP = "shelf_segmenter"  # the suite's video paths render shelves: they measure the shelf model
PERF_ANALYZER = PROJECT_ROOT / ".tools" / "perf_analyzer" / "perf_analyzer"


def bare_video_pipeline(
    video: Path, engine, painter: OverlayPainter, contract: ModelContract, out: Path
) -> float:
    """Frames/s of decode -> engine -> overlay -> encode in one process, one frame at a time."""
    started, count = time.perf_counter(), 0
    with VideoSink(out, fps=30) as sink:
        for frame in frames(video):
            mask = engine(contract.to_model_input(frame)[None])["masks"][0]
            sink.write(painter(frame, Segmentation(mask).to_image_size(*frame.shape[:2]).mask))
            count += 1
    return count / (time.perf_counter() - started)


def gateway_job(url: str, video: Path) -> dict:
    with httpx.Client(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        with open(video, "rb") as file:
            status_url = client.post("/v1/videos", files={"file": (video.name, file)}).json()["status_url"]
        while (job := client.get(status_url).json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.05)
        wall = time.perf_counter() - started
        client.delete(status_url)
    if job["status"] != "succeeded":
        raise RuntimeError(f"gateway job failed: {job['error']}")
    return {"fps": job["fps"], "fps_with_upload": job["frames_done"] / wall}


def baseline(url: str, sample: list[np.ndarray], count: int) -> dict:
    bodies = [
        json.dumps(
            {"image": base64.b64encode(cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1]).decode()}
        )
        for f in sample
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        for i in range(count):
            response = client.post(
                "/predict", content=bodies[i % len(bodies)], headers={"content-type": "application/json"}
            )
            response.raise_for_status()
        seconds = time.perf_counter() - started
    return {"fps": count / seconds, "response_bytes": len(response.content)}


def perf_analyzer(grpc_url: str, concurrency: str) -> list[dict] | None:
    """Triton's own load generator; None when it is not installed here."""
    if not PERF_ANALYZER.exists():
        return None
    csv = Path(os.environ.get("TMPDIR", "/tmp")) / f"perf_analyzer_{os.getpid()}.csv"
    command = [
        str(PERF_ANALYZER),
        "-m",
        FLAGSHIP,
        "-u",
        grpc_url,
        "-i",
        "grpc",
        f"--concurrency-range={concurrency}",
        "--measurement-interval=4000",
        "-f",
        str(csv),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    header, *rows = [line.split(",") for line in csv.read_text().splitlines()]
    csv.unlink()
    return [
        {
            "concurrency": int(r[0]),
            "fps": float(r[1]),
            "latency_ms_p95": float(r[header.index("p95 latency")]) / 1000,
        }
        for r in rows
    ]


def peak_memory_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and its children, e.g. Triton and its python stubs."""
    pids = [pid] + [
        int(p)
        for p in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        if int(p) != pid
    ]
    total = 0.0
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
    return round(total, 1)


class BaselineServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BaselineServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.baseline_server", "--port", str(self.port)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_until_ready(
            self.process, lambda: http_ok(f"{self.url}/docs"), 120, "baseline server", lambda: ""
        )
        return self

    def __exit__(self, *exc_info) -> None:
        stop_process_group(self.process, 10)


def run(repeats: int, seconds: float, num_frames: int, work: Path, with_perf_analyzer: bool = True) -> dict:
    from datagen.shelves import write_pan_video

    contract = ModelContract.load(FLAGSHIP)
    work.mkdir(parents=True, exist_ok=True)
    video = work / "shelf.mp4"
    write_pan_video(
        video,
        work / "shelf_masks.zip",
        seed=7,
        num_frames=num_frames,
        height=contract.height,
        width=contract.width,
    )
    sample = [contract.to_model_input(f) for f in itertools.islice(frames(video), 32)]
    batch = np.stack(sample)
    painter = OverlayPainter(contract.labels)
    engines = {name: load_engine(FLAGSHIP, engine=name) for name in ("openvino", "onnxruntime")}
    # (requests in flight, frames per request): one frame per request is a live camera; a video job
    # can send a few frames per request (benchmarks/tune_triton.py picked 3 x 2).
    windows = ((1, 1), (2, 1), (4, 1), (8, 1), (3, 2))
    runs: list[dict] = []
    with EmbeddedStack() as stack, BaselineServer() as base:
        for repeat in range(repeats):
            print(f"repeat {repeat + 1}/{repeats}", file=sys.stderr)
            result = {
                f"engine_{name}": measure_fps(engine, batch, seconds) for name, engine in engines.items()
            }
            result["bare_video_pipeline"] = bare_video_pipeline(
                video, engines["openvino"], painter, contract, work / "bare_overlay.mp4"
            )
            for in_flight, per_request in windows:
                result[f"triton_grpc_{in_flight}x{per_request}"] = asyncio.run(
                    measure_triton(
                        stack.triton.grpc_url, contract, sample, in_flight, int(seconds * 60), per_request
                    )
                )
            result["gateway_job"] = gateway_job(stack.gateway.url, video)
            result["baseline"] = baseline(base.url, sample, max(10, int(seconds * 5)))
            runs.append(result)
        other_models = measure_other_models(stack.triton, sample, seconds, repeats)
        drift_on_off = image_route_drift_on_off(stack.triton, sample, work, repeats)
        batch = batch_vs_engine(stack.triton, work, num_images=max(64, int(seconds * 40)))
        analyzer = perf_analyzer(stack.triton.grpc_url, "1:4") if with_perf_analyzer else None
        memory = {
            "triton_mb": peak_memory_mb(stack.triton.process.pid),
            "gateway_mb": peak_memory_mb(stack.gateway.process.pid),
            "baseline_mb": peak_memory_mb(base.process.pid),
        }
    return summarise(runs, analyzer, memory, contract, seconds, num_frames) | {
        "other_models": other_models,
        "image_route_drift": drift_on_off,
        "batch": batch,
    }


def batch_vs_engine(triton: TritonServer, work: Path, num_images: int) -> dict:
    """``prodseg batch run`` vs the bare engine on the same images, per served model (same run)."""
    from benchmarks.batch_bench import measure_batch, write_bench_images

    results = {}
    for name, contract in discover().contracts.items():
        if name not in triton.models:
            continue
        images = work / f"batch-images-{name}"
        shutil.rmtree(images, ignore_errors=True)
        write_bench_images(images, num_images, contract)
        results[name] = measure_batch(triton.grpc_url, name, images, work)
    return results


def image_route(url: str, model: str, images: list[bytes], count: int, concurrency: int = 4) -> float:
    """Images/s of ``POST /v1/models/{model}/images`` with ``concurrency`` clients, one image each."""
    from concurrent.futures import ThreadPoolExecutor

    def send(client: httpx.Client, i: int) -> None:
        response = client.post(
            f"/v1/models/{model}/images", files={"file": ("f.jpg", images[i % len(images)])}
        )
        response.raise_for_status()

    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: send(client, i), range(8)))  # warm up
        started = time.perf_counter()
        list(pool.map(lambda i: send(client, i), range(count)))
        return count / (time.perf_counter() - started)


def image_route_drift_on_off(
    triton: TritonServer, sample: list[np.ndarray], work: Path, repeats: int
) -> dict:
    """The gateway's image route with drift monitoring on and off, side by side, alternating."""
    from prodseg.stack import GatewayProcess, serving_env

    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in sample]
    gateways = {
        state: GatewayProcess(
            triton.grpc_url,
            data_dir=work / f"gateway-drift-{state}",
            env=serving_env(triton) | {"PRODSEG_DRIFT_ENABLED": "true" if state == "on" else "false"},
        ).start()
        for state in ("off", "on")
    }
    try:
        fps: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(repeats):
            for state, gateway in gateways.items():
                fps[state].append(image_route(gateway.url, FLAGSHIP, jpegs, 150))
    finally:
        for gateway in gateways.values():
            gateway.stop()
    off, on = statistics.median(fps["off"]), statistics.median(fps["on"])
    return {"drift_off_fps": round(off, 2), "drift_on_fps": round(on, 2), "on_vs_off": round(on / off, 3)}


def measure_other_models(
    triton: TritonServer, sample: list[np.ndarray], seconds: float, repeats: int
) -> dict:
    """Bare engine (OpenVINO, batch 1) vs Triton (gRPC, 4 x 1) frames/s of every other model, side by
    side. Throughput hardly depends on content, so the shelf frames are resized to each model's input."""
    results = {}
    contracts = discover().contracts
    for name in triton.models:
        if name == FLAGSHIP:
            continue
        contract = contracts[name]
        images = np.stack([contract.to_model_input(frame) for frame in sample])
        engine = load_engine(name, engine="openvino")
        engine_fps, triton_fps = [], []
        for _ in range(repeats):
            engine_fps.append(measure_fps(engine, images, seconds))
            run = measure_triton(triton.grpc_url, contract, list(images), 4, int(seconds * 60), 1)
            triton_fps.append(asyncio.run(run)["fps"])
        engine_median, triton_median = statistics.median(engine_fps), statistics.median(triton_fps)
        results[name] = {
            "task": contract.task.value,
            "version": latest_version(name),
            "input": [contract.height, contract.width],
            "engine_openvino_fps": round(engine_median, 2),
            "triton_grpc_4x1_fps": round(triton_median, 2),
            "triton_vs_engine": round(triton_median / engine_median, 3),
        }
    return results


def summarise(
    runs: list[dict], analyzer, memory: dict, contract: ModelContract, seconds: float, num_frames: int
) -> dict:
    def median(key: str, field: str | None = None) -> float:
        return round(statistics.median(r[key][field] if field else r[key] for r in runs), 2)

    grpc = {
        key: {
            "fps": median(key, "fps"),
            "latency_ms_p50": median(key, "latency_ms_p50"),
            "latency_ms_p95": median(key, "latency_ms_p95"),
        }
        for key in runs[0]
        if key.startswith("triton_grpc")
    }
    best_grpc = max(v["fps"] for v in grpc.values())
    medians = {
        "engine_openvino_fps": median("engine_openvino"),
        "engine_onnxruntime_fps": median("engine_onnxruntime"),
        "bare_video_pipeline_fps": median("bare_video_pipeline"),
        "triton_grpc": grpc,
        "gateway_job_fps": median("gateway_job", "fps"),
        "gateway_job_fps_with_upload": median("gateway_job", "fps_with_upload"),
        "baseline_fps": median("baseline", "fps"),
    }
    mask_bytes = contract.height * contract.width
    return {
        "what": "benchmarks.suite: every serving path, same model and input, medians over repeats",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": _versions(),
        "model": {
            "name": contract.model_name,
            "version": latest_version(contract.model_name),
            "input": [contract.height, contract.width],
        },
        "settings": {"repeats": len(runs), "seconds_per_measurement": seconds, "video_frames": num_frames},
        "medians": medians,
        "ratios": {
            "triton_vs_engine": round(best_grpc / medians["engine_openvino_fps"], 3),
            "gateway_vs_engine": round(medians["gateway_job_fps"] / medians["bare_video_pipeline_fps"], 3),
            "vs_baseline": round(best_grpc / medians["baseline_fps"], 2),
        },
        "bytes_per_returned_frame": {
            "uint8_mask": mask_bytes,
            "fp32_logits": mask_bytes * contract.num_classes * 4,
            "baseline_json_base64": runs[-1]["baseline"]["response_bytes"],
        },
        "peak_memory": memory,
        "perf_analyzer": analyzer,
        "runs": runs,
    }


def _versions() -> dict:
    from importlib.metadata import version

    packages = ("openvino", "onnxruntime", "tritonclient", "fastapi", "torch")
    return {name: version(name) for name in packages} | {"triton_server": "2.51.0 (nvidia-pytriton 0.7.0)"}


def write(result: dict, name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    m, r = result["medians"], result["ratios"]
    rows = [
        ("bare engine, OpenVINO (in-process, batch 1)", m["engine_openvino_fps"], ""),
        ("bare engine, ONNX Runtime", m["engine_onnxruntime_fps"], ""),
        ("bare video pipeline (decode, engine, overlay, encode)", m["bare_video_pipeline_fps"], ""),
    ]
    rows += [
        (
            "gRPC -> Triton, {} requests x {} frames in flight".format(
                *k.removeprefix("triton_grpc_").split("x")
            ),
            v["fps"],
            f"p95 {v['latency_ms_p95']} ms",
        )
        for k, v in m["triton_grpc"].items()
    ]
    rows += [
        ("gateway video job (pipeline only)", m["gateway_job_fps"], ""),
        ("gateway video job incl. upload", m["gateway_job_fps_with_upload"], ""),
        ("seed-style baseline (FastAPI + PyTorch eager, JSON/base64)", m["baseline_fps"], ""),
    ]
    for entry in result["perf_analyzer"] or []:
        rows.append(
            (
                f"perf_analyzer, concurrency {entry['concurrency']}",
                round(entry["fps"], 2),
                f"p95 {entry['latency_ms_p95']:.1f} ms",
            )
        )
    lines = [
        f"# {name}: {result['machine']['cpus']} CPUs, median of {result['settings']['repeats']}",
        "",
        "| path | frames/s | note |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Ratios: Triton / engine **{r['triton_vs_engine']}**, gateway job / bare pipeline "
        f"**{r['gateway_vs_engine']}**, ours / baseline **{r['vs_baseline']}x**.",
        "",
        f"Bytes per returned frame: {result['bytes_per_returned_frame']}.",
        "",
        f"Peak memory (MB): {result['peak_memory']}.",
    ]
    if result.get("other_models"):
        lines += [
            "",
            "| other model | task | bare engine (OpenVINO) | Triton (gRPC 4 x 1) | ratio |",
            "|---|---|---|---|---|",
        ]
        for model, m in result["other_models"].items():
            fps = f"{m['engine_openvino_fps']} | {m['triton_grpc_4x1_fps']} | {m['triton_vs_engine']}"
            lines.append(f"| {model} | {m['task']} | {fps} |")
    if result.get("image_route_drift"):
        d = result["image_route_drift"]
        lines += [
            "",
            f"Image route (4 clients): drift monitoring off {d['drift_off_fps']} images/s, on "
            f"{d['drift_on_fps']} images/s, on/off **{d['on_vs_off']}**.",
        ]
    if result.get("batch"):
        lines += [
            "",
            "| batch job | images/s | bare engine b1 | ratio | bare engine batched | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for model, b in result["batch"].items():
            bare = f"{b['bare_engine_images_per_s']} | {b['ratio_to_bare']}"
            batched = f"{b['bare_engine_batched_images_per_s']} | {b['ratio_to_bare_batched']}"
            lines.append(f"| {model} | {b['batch_images_per_s']} | {bare} | {batched} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / f"{name}.png")


def _plot(rows: list[tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    axis.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="tab:blue")
    axis.set_xlabel("frames/s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--name", default="suite")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-scale", action="store_true", help="leave out benchmarks.scale (~10 min)")
    args = parser.parse_args(argv)
    work = PROJECT_ROOT / "out" / "bench"
    result = run(args.repeats, args.seconds, args.frames, work)
    write(result, args.name, args.out)
    if not args.skip_scale and args.name == "suite":  # scale.json, and suite.json's ``scale``
        from benchmarks.scale import measure_scale
        from benchmarks.scale import write as write_scale

        write_scale(measure_scale(work / "scale", args.repeats), args.out)
    shutil.rmtree(work, ignore_errors=True)
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
