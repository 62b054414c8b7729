"""``python -m loadtest.run``: a bounded headless Locust run, its report, and its plot.

Without ``--host`` it starts the embedded stack (real Triton + gateway on 127.0.0.1) and stops it
afterwards; with ``--host https://gateway... --triton-grpc triton:8001`` it loads a cluster.
Exits non-zero, with the reason, when the target is down or the run failed; never hangs: Locust
runs under a hard time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import psutil
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="", help="gateway URL; empty: start the embedded stack")
    parser.add_argument("--triton-grpc", default="", help="Triton gRPC host:port (with --host)")
    parser.add_argument("--triton-metrics", default="", help="Triton metrics URL (with --host)")
    parser.add_argument("--model", default="shelf_segmenter", help="model the cameras stream shelf frames to")
    parser.add_argument("--steps", default="1,2,3,4", help="cameras per step")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second each camera sends")
    parser.add_argument("--window", type=int, default=2, help="requests in flight per camera")
    add_camera_options(parser)
    parser.add_argument("--upload-users", type=int, default=0, help="users uploading videos alongside")
    parser.add_argument("--out", type=Path, default=Path("out/loadtest"))
    parser.add_argument("--max-failure-rate", type=float, default=0.01)
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run a real Prometheus on 127.0.0.1 scraping Triton and the gateway",
    )
    return parser.parse_args(argv)


def add_camera_options(parser: argparse.ArgumentParser) -> None:
    """What each camera sends and how (passed on to the locustfile's ``--camera-*`` options)."""
    parser.add_argument("--wire", choices=("raw", "jpeg"), default="raw", help="what cameras send")
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--reuse", choices=("off", "auto"), default="off", help="cameras' temporal reuse")
    parser.add_argument("--max-interval", type=int, default=8, help="frames between keyframes at most")
    parser.add_argument(
        "--lookahead", type=int, default=0, help="frames a carried result may wait for the next keyframe"
    )
    parser.add_argument("--pan", type=float, default=40.0, help="pixels per frame the cameras pan")
    parser.add_argument("--loop-frames", type=int, default=8, help="frames in each camera's loop")


def camera_arguments(args: argparse.Namespace) -> list[str]:
    return [
        "--camera-wire", args.wire, "--jpeg-quality", str(args.jpeg_quality),
        "--camera-reuse", args.reuse, "--camera-max-interval", str(args.max_interval),
        "--camera-lookahead", str(args.lookahead),
        "--camera-pan", str(args.pan), "--camera-frames", str(args.loop_frames),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if not args.host:
            from prodseg.stack import EmbeddedStack

            embedded = stack.enter_context(EmbeddedStack())
            args.host, args.triton_grpc = embedded.gateway.url, embedded.triton.grpc_url
            args.triton_metrics = embedded.triton.metrics_url
            print(f"embedded stack: gateway {args.host}, Triton {args.triton_grpc}", file=sys.stderr)
        if not args.triton_grpc:
            print("error: --triton-grpc is required with --host", file=sys.stderr)
            return 2
        if problem := preflight(args.triton_grpc, args.model):
            print(f"error: {problem}", file=sys.stderr)
            return 2
        prometheus = None
        if args.prometheus:
            from prodseg.prometheus import PrometheusServer

            targets = {"triton": args.triton_metrics, "gateway": f"{args.host}/metrics"}
            targets = {job: url for job, url in targets.items() if url}
            prometheus = stack.enter_context(PrometheusServer(targets))
            prometheus.wait_for(f"count(up == 1) == {len(targets)}")  # every target scraped once
        return run_locust(args, prometheus)


def preflight(triton_grpc: str, model: str) -> str | None:
    """Say why the target cannot take load, or None when it can."""
    try:
        with grpcclient.InferenceServerClient(triton_grpc) as client:
            if not client.is_model_ready(model, client_timeout=5):
                return f"Triton at {triton_grpc} is up but {model} is not ready"
    except InferenceServerException as error:
        return f"Triton at {triton_grpc} is not reachable: {error.message()}"
    return None


def run_locust(args: argparse.Namespace, prometheus=None) -> int:
    report_path = args.out / "report.json"
    report_path.unlink(missing_ok=True)
    user_classes = ["CameraUser"]
    if args.upload_users:
        user_classes.append("UploadUser")
        from datagen.shelves import write_pan_video

        write_pan_video(args.out / "upload.mp4", args.out / "upload_masks.zip", seed=5, num_frames=60)
    steps = [int(s) for s in args.steps.split(",")]
    budget_s = len(steps) * args.step_seconds + 60  # the run, plus start-up and a graceful stop
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "--triton-grpc",
        args.triton_grpc,
        "--model",
        args.model,
        "--triton-metrics",
        args.triton_metrics,
        "--steps",
        args.steps,
        "--step-seconds",
        str(args.step_seconds),
        "--camera-fps",
        str(args.fps),
        "--camera-window",
        str(args.window),
        *camera_arguments(args),
        "--upload-users",
        str(args.upload_users),
        "--upload-video",
        str(args.out / "upload.mp4"),
        "--report",
        str(report_path),
        "--json-file",
        str(args.out / "locust_stats"),
        "--only-summary",
        "--stop-timeout",
        "10",
        "--exit-code-on-error",
        "0",
        *user_classes,
    ]
    started = time.monotonic()
    cpu = CpuSplit()  # taken before Locust starts: every child of ours now is the embedded stack
    try:
        locust = run_measured(command, budget_s, cpu)
    except subprocess.TimeoutExpired:  # run_measured kills it: no hang at exit
        print(f"error: Locust did not finish within {budget_s:.0f} s and was killed", file=sys.stderr)
        return 1
    (args.out / "locust.log").write_text(locust.stdout + locust.stderr)
    if locust.returncode != 0 or not report_path.exists():
        print(
            f"error: Locust exited with {locust.returncode}; see {args.out / 'locust.log'}", file=sys.stderr
        )
        print(locust.stderr[-2000:], file=sys.stderr)
        return 1
    report = json.loads(report_path.read_text())
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["cpu"] = cpu.summary(os.cpu_count() or 1)
    if prometheus is not None:
        time.sleep(3)  # Triton refreshes its counters every 2 s; let the last values be scraped
        report["prometheus"] = server_side_series(prometheus, window_s=report["wall_s"] + 3)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "report.png")
    print_summary(report)
    return verdict(report, args.max_failure_rate)


LOADGEN_NICE = -5  # Locust's scheduling priority, ahead of the stack's processes (0)


class CpuSplit:
    """CPU time of the embedded stack (our children when Locust starts) and of Locust, over the run.

    On one machine the load generator's cameras (JPEG payloads, motion estimates, propagated masks)
    take cores the server would otherwise have: the split says how much, so a figure measured here
    reads for what it is. With ``--host`` the stack is elsewhere and only Locust is counted."""

    def __init__(self) -> None:
        self.stack = psutil.Process().children(recursive=True)
        self.stack_start = _cpu_seconds(self.stack)
        self.locust_seconds = 0.0
        self.locust_nice: int | None = None
        self.started = time.monotonic()

    def prioritise_locust(self, pid: int) -> None:
        """Cameras are devices of their own: on a shared machine the stack's busy threads would
        otherwise delay the cameras' ticks and their frames would count as dropped by the server.
        Locust (one process, all cameras) runs ahead of the stack in the scheduler where the OS
        allows it (root); what it got is reported."""
        try:
            psutil.Process(pid).nice(LOADGEN_NICE)
            self.locust_nice = LOADGEN_NICE
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            self.locust_nice = os.nice(0)  # as started: raising a priority needs root

    def watch_locust(self, pid: int) -> None:
        """Called while Locust runs: its tree's CPU so far (its last second is lost when it exits)."""
        try:
            locust = psutil.Process(pid)
            self.locust_seconds = max(self.locust_seconds, _cpu_seconds([locust, *locust.children(True)]))
        except psutil.NoSuchProcess:
            pass

    def summary(self, cpus: int) -> dict:
        wall = time.monotonic() - self.started
        stack = _cpu_seconds(self.stack) - self.stack_start
        return {
            "cpus": cpus,
            "stack_cores": round(stack / wall, 2) if self.stack else None,
            "loadgen_cores": round(self.locust_seconds / wall, 2),
            "loadgen_nice": self.locust_nice,
            "note": "mean cores over the whole run (start-up and steps), stack = Triton, stubs, gateway",
        }


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:  # gone: its time is no longer counted anywhere
            pass
    return total


def run_measured(command: list[str], timeout_s: float, cpu: CpuSplit) -> subprocess.CompletedProcess:
    """``subprocess.run`` with a hard timeout that samples Locust's CPU once a second."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        cpu.prioritise_locust(process.pid)
        deadline = time.monotonic() + timeout_s
        output: tuple[str, str] | None = None
        while output is None:
            cpu.watch_locust(process.pid)
            try:
                output = process.communicate(timeout=1.0)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    process.kill()
                    process.communicate()
                    raise
        return subprocess.CompletedProcess(command, process.returncode, *output)


def server_side_series(prometheus, window_s: float) -> dict:
    """What Prometheus saw during the run: Triton's and the gateway's own counters over the window."""
    window = f"{max(int(window_s), 5)}s"
    queries = {
        "triton_inferences_per_s": f"sum(rate(nv_inference_request_success[{window}]))",
        "triton_queue_us_per_request": f"sum(increase(nv_inference_queue_duration_us[{window}])) / "
        f"sum(increase(nv_inference_request_success[{window}]))",
        "triton_frames_per_execution": f"sum(increase(nv_inference_count[{window}])) / "
        f"sum(increase(nv_inference_exec_count[{window}]))",
        "gateway_frames": "sum(prodseg_gateway_frames_total)",
        "targets_up": "sum(up)",
    }
    series = {}
    for name, promql in queries.items():
        result = prometheus.query(promql)
        series[name] = round(float(result[0]["value"][1]), 3) if result else None
    return series


def verdict(report: dict, max_failure_rate: float) -> int:
    completed = sum(step["completed"] for step in report["steps"])
    failed = sum(step["failed"] for step in report["steps"])
    if completed == 0:
        print(f"error: no frame was segmented; errors: {report['errors']}", file=sys.stderr)
        return 1
    if failed / (completed + failed) > max_failure_rate:
        print(
            f"error: {failed} of {completed + failed} frames failed; errors: {report['errors']}",
            file=sys.stderr,
        )
        return 1
    return 0


def print_summary(report: dict) -> None:
    columns = ("cameras", "fps p5", "fps med", "total", "drop %", "p50 ms", "p95 ms", "p99 ms")
    print(" ".join(f"{name:>8}" for name in columns))
    for step in report["steps"]:
        values = (
            step["users"],
            step["fps_per_user_p5"],
            step["fps_per_user_median"],
            step["frames_per_s_total"],
            round((step["drop_rate"] or 0) * 100, 1),
            step["latency_ms_p50"],
            step["latency_ms_p95"],
            step["latency_ms_p99"],
        )
        print(" ".join(f"{value!s:>8}" for value in values))
    fps = f"{report['camera_fps_target']:.0f} FPS"
    print(f"cameras sustained at {fps} (p5 >= 95%, drops < 1%): {report['users_sustained_at_target']}")
    print(f"cameras at {fps} with <= 1% of frames dropped: {report['users_within_drop_budget']}")
    if report.get("triton"):
        print(f"Triton: {report['triton']}")
    if cpu := report.get("cpu"):
        cores = f"stack {cpu['stack_cores']}, load generator {cpu['loadgen_cores']}"
        print(f"CPU (mean cores of {cpu['cpus']}): {cores}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    users = [s["users"] for s in steps]
    figure, fps_axis = plt.subplots(figsize=(7, 4))
    fps_axis.plot(users, [s["fps_per_user_median"] for s in steps], "o-", label="FPS per camera (median)")
    fps_axis.plot(users, [s["fps_per_user_p5"] for s in steps], "o--", label="FPS per camera (p5)")
    fps_axis.axhline(report["camera_fps_target"], color="grey", linewidth=0.8, label="target")
    fps_axis.set_xlabel("cameras")
    fps_axis.set_ylabel("frames/s per camera")
    latency_axis = fps_axis.twinx()
    latency_axis.plot(users, [s["latency_ms_p95"] for s in steps], "s:", color="tab:red", label="p95 latency")
    latency_axis.set_ylabel("p95 latency (ms)")
    figure.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
