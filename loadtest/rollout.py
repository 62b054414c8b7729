"""``python -m loadtest.rollout``: a new model version rolled out under load, replica by replica.

Starts two real Triton servers (each with its own copy of a scratch repository, as pods have, in which
the model's latest version is copied as the next one), one gateway balancing over both, and a
headless Locust run of camera users (gRPC, a fixed FPS, balanced over both replicas) and upload users
(videos through the gateway). A third of the way in it runs ``prodseg.rollout.rollout`` (load new,
wait ready, switch, drain old, replica by replica) and then writes ``--results``: requests, failures
and dropped frames, and p95 latency, before, during and after the rollout, with the rollout's own
timeline. Everything started is stopped by PID, also when something fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from clients.contract import default_repository
from clients.repository import latest_version
from loadtest.run import add_camera_options, camera_arguments

LOCUSTFILE = Path(__file__).with_name("rollout_locustfile.py")
CAMERA_REQUEST = "grpc"  # the request type camera frames report (locustfile.CameraUser)
CARRIED_FRAME = "reuse"  # frames temporal reuse answered from their keyframe: no request


def scratch_repository(destination: Path, model: str, source: Path | None = None) -> tuple[int, int]:
    """``model`` of ``source`` copied into ``destination``, its latest version copied again as the
    next one (the same weights: a real new version folder for a rollout), and every config pinned to
    the old one. Returns (old, new)."""
    from prodseg.rollout import write_served_versions

    source = Path(source or default_repository())
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "onnx_runner.py", destination / "onnx_runner.py")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(source / model, destination / model, symlinks=True, ignore=ignore)
    old = latest_version(model, destination)
    new = old + 1
    shutil.copytree(destination / model / str(old), destination / model / str(new), symlinks=True)
    write_served_versions(destination / model, [old])
    return old, new


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shelf_segmenter")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second each camera sends")
    parser.add_argument("--window", type=int, default=2, help="requests in flight per camera")
    add_camera_options(parser)
    parser.add_argument("--upload-users", type=int, default=1)
    parser.add_argument(
        "--upload-every-s", type=float, default=10.0, help="each upload user starts a job every N s"
    )
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the Locust run")
    parser.add_argument("--rollout-at", type=float, default=30.0, help="seconds into the run")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds left out at the start")
    parser.add_argument("--out", type=Path, default=Path("out/rollout"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/rollout.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from prodseg.processes import start_child, stop_process_group
    from prodseg.rollout import Replica, RolloutFailed, rollout
    from prodseg.stack import GatewayProcess, serving_env
    from prodseg.triton_server import TritonServer

    args = parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    with ExitStack() as stack:
        servers, repositories = [], []
        for name in ("a", "b"):
            repository = args.out / f"repository-{name}"
            old, new = scratch_repository(repository, args.model)
            server = TritonServer(
                repository=repository, models=(args.model,), log_path=args.out / f"triton-{name}.log"
            )
            stack.callback(server.stop)
            servers.append(server.start())
            repositories.append(repository)
        endpoints = ",".join(server.grpc_url for server in servers)
        gateway = GatewayProcess(endpoints, data_dir=args.out / "gateway", env=serving_env(servers[0]))
        stack.callback(gateway.stop)
        gateway.start()
        print(f"Triton replicas {endpoints} (version {old}), gateway {gateway.url}", file=sys.stderr)

        from datagen.shelves import write_pan_video

        video = args.out / "upload.mp4"
        write_pan_video(video, args.out / "upload_masks.zip", seed=5, num_frames=60)
        events_file = args.out / "events.json"
        locust = start_child(
            locust_command(args, gateway.url, endpoints, video, events_file), args.out / "locust.log"
        )
        stack.callback(stop_process_group, locust, 15)
        launched = time.time()

        time.sleep(args.rollout_at)
        replicas = [Replica(s.http_url, r) for s, r in zip(servers, repositories, strict=True)]
        try:
            report = rollout(args.model, new, replicas, log=lambda m: print(f"rollout: {m}", file=sys.stderr))
        except RolloutFailed as failure:
            report = failure.report
        print(
            f"rollout {'done' if report.ok else 'FAILED: ' + report.reason} in {report.seconds:.1f} s",
            file=sys.stderr,
        )

        try:
            locust.wait(timeout=args.seconds + 90)
        except subprocess.TimeoutExpired:
            print("error: Locust did not finish in time; see locust.log", file=sys.stderr)
            return 1
        if not events_file.exists():
            print(
                f"error: Locust wrote no events (exit {locust.returncode}); see {args.out / 'locust.log'}",
                file=sys.stderr,
            )
            return 1
        recorded = json.loads(events_file.read_text())
        results = summarise(recorded, report, launched + args.warmup, args, servers[0], old, new)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("requests", "failures", "dropped_frames", "p95_ms")}, indent=2))
    print(f"wrote {args.results}", file=sys.stderr)
    return 0 if results["verdict"]["zero_failures"] and report.ok else 1


def locust_command(
    args: argparse.Namespace, host: str, endpoints: str, video: Path, events_file: Path
) -> list[str]:
    users = ["CameraUser"] + (["UploadUser"] if args.upload_users else [])
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host,
        "--triton-grpc", endpoints,
        "--model", args.model,
        "--steps", str(args.cameras),  # one step: a steady load for the whole run
        "--step-seconds", str(args.seconds),
        "--camera-fps", str(args.fps),
        "--camera-window", str(args.window),
        *camera_arguments(args),
        "--upload-users", str(args.upload_users), "--upload-every-s", str(args.upload_every_s),
        "--upload-video", str(video),
        "--report", str(args.out / "report.json"),
        "--events-file", str(events_file),
        "--json-file", str(args.out / "locust_stats"),
        "--only-summary",
        "--stop-timeout", "10",
        "--exit-code-on-error", "0",
        *users,
    ]  # fmt: skip


def window_figures(requests: list[list], drops: list[float], start: float, end: float) -> dict:
    """What happened between ``start`` and ``end`` (wall clock): requests by their finishing time."""
    inside = [r for r in requests if start <= r[0] < end]
    carried = [r for r in inside if r[1] == CARRIED_FRAME]
    sent = [r for r in inside if r[1] != CARRIED_FRAME]
    camera = [r for r in sent if r[1] == CAMERA_REQUEST]
    camera_ok_ms = np.array([r[3] for r in camera if not r[4]])  # the server's side: requests only
    uploads = [r for r in sent if r[1] != CAMERA_REQUEST]
    dropped = sum(1 for t in drops if start <= t < end)
    camera_frames = len(camera) + len(carried)
    offered = camera_frames + dropped

    def percentile(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 1) if len(values) else None

    jobs = np.array([r[3] for r in uploads if r[2] == "video job to completion" and not r[4]])
    return {
        "seconds": round(end - start, 1),
        "requests": len(sent),
        "failures": sum(1 for r in inside if r[4]),  # a carried frame fails with its keyframe
        "camera_frames": camera_frames,
        "camera_frames_inferred": len(camera),
        "camera_fps_total": round(camera_frames / (end - start), 2) if end > start else None,
        "dropped_frames": dropped,
        "drop_rate": round(dropped / offered, 4) if offered else None,
        "camera_latency_ms_p50": percentile(camera_ok_ms, 50),
        "camera_latency_ms_p95": percentile(camera_ok_ms, 95),
        "upload_requests": len(uploads),
        "video_jobs_completed": len(jobs),
        "video_job_ms_p95": percentile(jobs, 95),
    }


def summarise(recorded: dict, report, measured_from: float, args, server, old: int, new: int) -> dict:
    requests, drops = recorded["requests"], recorded["drops"]
    rollout_start = report.started_at
    rollout_end = report.started_at + report.seconds
    run_end = max([r[0] for r in requests] + [rollout_end]) + 0.001
    windows = {
        "before": window_figures(requests, drops, measured_from, rollout_start),
        "during": window_figures(requests, drops, rollout_start, rollout_end),
        "after": window_figures(requests, drops, rollout_end, run_end),
    }
    whole = window_figures(requests, drops, 0.0, run_end)
    errors: dict[str, int] = {}
    for r in requests:
        if r[4]:
            errors[f"{r[2]}: {r[4]}"] = errors.get(f"{r[2]}: {r[4]}", 0) + 1
    normal = windows["before"]["drop_rate"] or 0.0
    during = windows["during"]["drop_rate"] or 0.0
    return {
        "what": "a new model version rolled out replica by replica while cameras and uploads run",
        "requests": whole["requests"],
        "failures": whole["failures"],
        "dropped_frames": whole["dropped_frames"],
        "camera_normal_drop_rate": normal,
        "p95_ms": {name: w["camera_latency_ms_p95"] for name, w in windows.items()},
        "windows": windows,
        "errors": errors,
        "verdict": {
            "zero_failures": whole["failures"] == 0,
            # "normal" = the rate measured before the rollout, plus one point of noise on a shared machine
            "drops_within_normal_rate": during <= normal + 0.01,
            "rollout_ok": report.ok,
        },
        "rollout": report.to_dict() | {"versions": {"old": old, "new": new}},
        "serving_at_end": report.serving,
        "load": {
            "cameras": args.cameras,
            "camera_fps": args.fps,
            "camera_window": args.window,
            "upload_users": args.upload_users,
            "upload_every_s": args.upload_every_s,
            "upload_video_frames": 60,
            "run_seconds": args.seconds,
            "rollout_at_s": args.rollout_at,
            "warmup_excluded_s": args.warmup,
            "replicas": 2,
            "repositories": "one copy per replica (as pods have)",
            "client_balancing": "gRPC round_robin over both replicas (cameras and the gateway)",
        },
        "machine": machine_info(server),
    }


def machine_info(server) -> dict:
    from importlib.metadata import version  # importing locust here would monkey-patch this process

    info = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "locust": version("locust"),
        "note": "a shared 2-core machine; absolute latencies vary between runs, compare within one",
    }
    import httpx

    try:
        info["tritonserver"] = httpx.get(f"http://{server.http_url}/v2", timeout=5).json().get("version")
    except httpx.HTTPError:  # the version is a nicety, not a reason to lose the figures
        info["tritonserver"] = None
    return info


if __name__ == "__main__":
    sys.exit(main())
