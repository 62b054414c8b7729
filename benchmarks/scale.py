"""Video at scale, side by side in one run: the suite's ``scale`` section.

``python -m benchmarks.scale [--repeats 3] [--step-seconds 15]`` (also run by ``benchmarks.suite``):

- the wire: raw pixels vs JPEG frames in / PNG masks out (``benchmarks/wire_bench.py``): bytes per
  frame up and down, frames/s, mIoU on the demo video;
- temporal reuse (``benchmarks/temporal_bench.py``): engine calls and mIoU with reuse on and off, on
  the demo video and on a faster pan;
- cameras per replica: the Locust camera scenario (``loadtest.run``) on one embedded replica, as today
  (raw frames, every frame inferred) and with the wire and reuse together, at the demo's pan speed,
  a fast pan's and a slow one's, forwards only; then with a lookahead (carried frames wait up to
  ``LOOKAHEAD`` frames for the next keyframe: fewer keyframes, later results) at the demo's and the
  fast pan. N cameras count when they run at 30 FPS with <= 1% of frames dropped and none failed
  (the issue's target); the stricter figure also wants the slowest camera-seconds (p5) at 95% of
  30 FPS. Each run says how many cores the stack and the load generator (same machine) took.

Writes ``scale.json`` and ``scale.md`` and sets ``scale`` in ``suite.json`` when it exists (the rest of
the suite is left as its last run wrote it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from prodseg.triton_server import PROJECT_ROOT, TritonServer

RESULTS = Path(__file__).parent / "results"
FLAGSHIP = "shelf_segmenter"
CAMERA_FPS = 30.0
# (name, loadtest.run options): today's camera, then the wire and reuse together at three pan speeds:
# the demo's handheld pan, a fast one, and a slow one (a shelf-scanning robot or a near-still camera,
# where keyframes come from max_interval rather than from what comes into view).
LOOKAHEAD = 7  # frames (233 ms at 30 FPS): keyframes at most 8 apart, the default max_interval
LONG_LOOKAHEAD = 11  # frames (367 ms): keyframes at most 12 apart
CAMERA_SCENARIOS = {
    "raw_every_frame": "--steps 1,2,3,4 --wire raw --reuse off --pan 40 --loop-frames 8",
    "jpeg_reuse_demo_pan": "--steps 3,4,5,6,8 --wire jpeg --reuse auto --pan 6 --loop-frames 150",
    "jpeg_reuse_fast_pan": "--steps 1,2,3,4,6 --wire jpeg --reuse auto --pan 16 --loop-frames 150",
    "jpeg_reuse_slow_pan": "--steps 4,6,8,10 --wire jpeg --reuse auto --pan 2 --loop-frames 150",
    "jpeg_lookahead_demo_pan": f"--steps 4,6,8,10 --wire jpeg --reuse auto --lookahead {LOOKAHEAD} --pan 6 "
    "--loop-frames 150",
    "jpeg_long_lookahead_demo_pan": f"--steps 4,6,8,10 --wire jpeg --reuse auto --max-interval "
    f"{LONG_LOOKAHEAD + 1} --lookahead {LONG_LOOKAHEAD} --pan 6 --loop-frames 150",
    "jpeg_lookahead_fast_pan": f"--steps 2,4,6,8 --wire jpeg --reuse auto --lookahead {LOOKAHEAD} --pan 16 "
    "--loop-frames 150",
}
# The headline is the best of these (the scenario is named beside it; each one's figure is kept).
DEMO_PAN_SCENARIOS = ("jpeg_reuse_demo_pan", "jpeg_lookahead_demo_pan", "jpeg_long_lookahead_demo_pan")


def cameras_per_replica(work: Path, step_seconds: float) -> dict:
    """Each camera scenario against its own fresh embedded stack; the cameras it sustained at 30 FPS."""
    results = {}
    for name, options in CAMERA_SCENARIOS.items():
        out = work / f"cameras-{name}"
        command = [sys.executable, "-m", "loadtest.run", "--fps", str(CAMERA_FPS)]
        command += ["--step-seconds", str(step_seconds), "--out", str(out), *options.split()]
        print(f"cameras: {name}", file=sys.stderr)
        subprocess.run(command, check=True, cwd=PROJECT_ROOT, timeout=900)
        report = json.loads((out / "report.json").read_text())
        results[name] = {
            "options": options,
            "cameras_at_30fps": report["users_within_drop_budget"],
            "cameras_at_30fps_p5": report["users_sustained_at_target"],
            "steps": report["steps"],
            "cpu": report.get("cpu"),  # the load generator shares the machine's cores with the stack
            "wire": report.get("wire"),
        }
    return results


def measure_scale(work: Path, repeats: int = 3, step_seconds: float = 15.0) -> dict:
    from benchmarks.temporal_bench import measure_temporal
    from benchmarks.wire_bench import measure_wire

    work.mkdir(parents=True, exist_ok=True)
    print("wire: raw vs JPEG", file=sys.stderr)
    wire = measure_wire(repeats=repeats, work_dir=work)
    print("temporal reuse", file=sys.stderr)
    with TritonServer(models=(FLAGSHIP,), log_path=work / "triton-temporal.log") as triton:
        temporal = measure_temporal(triton.grpc_url, work / "temporal")
    cameras = cameras_per_replica(work, step_seconds)
    best = max(DEMO_PAN_SCENARIOS, key=lambda name: cameras[name]["cameras_at_30fps"])
    return {
        "scale": {
            **wire["scale"],
            "temporal_calls_saved": temporal["temporal_calls_saved"],
            "temporal_miou_loss": temporal["temporal_miou_loss"],
            **live_reuse_figures(temporal),
            "cameras_at_30fps": cameras[best]["cameras_at_30fps"],
            "cameras_at_30fps_scenario": best,
            **{f"cameras_at_30fps_{name}": cameras[name]["cameras_at_30fps"] for name in DEMO_PAN_SCENARIOS},
            "cameras_at_30fps_fast_pan": cameras["jpeg_reuse_fast_pan"]["cameras_at_30fps"],
            "cameras_at_30fps_fast_pan_lookahead": cameras["jpeg_lookahead_fast_pan"]["cameras_at_30fps"],
            "cameras_at_30fps_slow_pan": cameras["jpeg_reuse_slow_pan"]["cameras_at_30fps"],
            "cameras_at_30fps_raw_every_frame": cameras["raw_every_frame"]["cameras_at_30fps"],
        },
        "wire": wire,
        "temporal": temporal,
        "cameras": cameras,
    }


def live_reuse_figures(temporal: dict) -> dict:
    """Live streams at the default settings, forwards only and with ``LOOKAHEAD``: engine calls saved
    and mIoU loss, the worse of the two videos (as the video jobs' figures are)."""

    def with_lookahead(lookahead: int) -> list[dict]:
        return [
            next(run for run in video["live_lookahead"] if run["settings"]["lookahead"] == lookahead)
            for video in temporal["videos"].values()
        ]

    runs = {
        "forwards": [video["live_forward_only"] for video in temporal["videos"].values()],
        "lookahead": with_lookahead(LOOKAHEAD),
        "long_lookahead": with_lookahead(LONG_LOOKAHEAD),
    }
    figures = {}
    for kind, found in runs.items():
        figures[f"live_{kind}_calls_saved"] = min(run["calls_saved"] for run in found)
        figures[f"live_{kind}_miou_loss"] = max(run["miou_loss"] for run in found)
    return figures


def write(result: dict, out: Path) -> None:
    """``wire.json``, ``temporal.json`` + ``temporal.png`` in full; ``scale.json`` with the summary."""
    from benchmarks.temporal_bench import plot

    out.mkdir(parents=True, exist_ok=True)
    wire, temporal = result["wire"], result["temporal"]
    (out / "wire.json").write_text(json.dumps(wire, indent=2) + "\n")
    (out / "temporal.json").write_text(json.dumps(temporal, indent=2) + "\n")
    plot(temporal, out / "temporal.png")
    summary = result | {
        "wire": {
            key: wire[key]
            for key in ("raw", "jpeg", "saturated", "default_quality", "met", "cpu_bound_fps_ratio")
        },
        "temporal": {
            "default": temporal["default"],
            "target": temporal["target"],
            "videos": {
                name: {
                    "pixels_per_frame": video["pixels_per_frame"],
                    "every_frame_miou": video["every_frame"]["miou"],
                    "reuse": [
                        {k: run[k] for k in ("settings", "engine_calls", "calls_saved", "miou", "miou_loss")}
                        for run in video["reuse"]
                    ],
                    "live_forward_only": {
                        k: video["live_forward_only"][k] for k in ("engine_calls", "calls_saved", "miou_loss")
                    },
                    "live_curve": [
                        {k: run[k] for k in ("settings", "engine_calls", "calls_saved", "miou_loss")}
                        for run in video.get("live_curve", [])
                    ],
                    "live_lookahead": [
                        {k: run[k] for k in ("settings", "engine_calls", "calls_saved", "miou_loss")}
                        for run in video.get("live_lookahead", [])
                    ],
                }
                for name, video in temporal["videos"].items()
            },
        },
    }
    (out / "scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    suite = out / "suite.json"
    if suite.is_file():
        merged = json.loads(suite.read_text()) | {"scale": result["scale"]}
        suite.write_text(json.dumps(merged, indent=2) + "\n")
    s, wire = result["scale"], result["wire"]
    lines = [
        "# scale: video at scale, one run on 2 CPUs",
        "",
        "| figure | raw / every frame | compressed / reuse | ratio | target |",
        "|---|---|---|---|---|",
        f"| bytes per frame up | {wire['raw']['bytes_up_per_frame']:.0f} | "
        f"{wire['jpeg']['bytes_up_per_frame']:.0f} | {s['bytes_up_ratio']} | <= 0.1 |",
        f"| bytes per frame down | {wire['raw']['bytes_down_per_frame']:.0f} | "
        f"{wire['jpeg']['bytes_down_per_frame']:.0f} | {s['bytes_down_ratio']} | <= 0.05 |",
        f"| frames/s (SDK, 4 in flight) | {wire['raw']['fps']:.1f} | {wire['jpeg']['fps']:.1f} "
        f"| {s['compressed_fps_ratio']} | >= 0.9 |",
        f"| frames/s (SDK, {wire['saturated']['in_flight']} in flight: the server busy on both paths) | "
        f"{wire['saturated']['raw']['fps']:.1f} | {wire['saturated']['jpeg']['fps']:.1f} "
        f"| {s['compressed_fps_ratio_saturated']} | >= 0.9 |",
        f"| demo mIoU | {wire['raw']['miou']} | {wire['jpeg']['miou']} | loss {s['compressed_miou_loss']} "
        "| <= 0.005 |",
        f"| engine calls, temporal reuse, video jobs (worst of 2 videos) | 1x | {s['temporal_calls_saved']}x "
        f"fewer | loss {s['temporal_miou_loss']} | >= 3x, <= 0.01 |",
        f"| engine calls, live, forwards only (worst of 2 videos) | 1x | {s['live_forwards_calls_saved']}x "
        f"fewer | loss {s['live_forwards_miou_loss']} | >= 3x, <= 0.01 |",
        f"| engine calls, live, lookahead {LOOKAHEAD} frames (worst of 2 videos) | 1x | "
        f"{s['live_lookahead_calls_saved']}x fewer | loss {s['live_lookahead_miou_loss']} | >= 3x, <= 0.01 |",
        f"| engine calls, live, lookahead {LONG_LOOKAHEAD} frames (worst of 2 videos) | 1x | "
        f"{s['live_long_lookahead_calls_saved']}x fewer | loss {s['live_long_lookahead_miou_loss']} | |",
        f"| cameras at 30 FPS, one replica, demo pan | {s['cameras_at_30fps_raw_every_frame']} | "
        f"{s['cameras_at_30fps']} ({s['cameras_at_30fps_scenario']}; "
        + ", ".join(f"{name} {s[f'cameras_at_30fps_{name}']}" for name in DEMO_PAN_SCENARIOS)
        + ") | | >= 6 |",
        f"| cameras at 30 FPS, fast / slow pan | | fast {s['cameras_at_30fps_fast_pan']} (lookahead "
        f"{s['cameras_at_30fps_fast_pan_lookahead']}), slow {s['cameras_at_30fps_slow_pan']} | | |",
        "",
        "Cameras (loadtest.run, one run per scenario, the load generator on the same 2 cores and ahead "
        "of the stack in the scheduler; a frame its camera produced while the load generator waited "
        "for the CPU goes out late from a 2-frame capture buffer, and counts as dropped when that "
        "overflows):",
        "",
        "| scenario | cameras at 30 FPS, <= 1% dropped | and p5 >= 28.5 | latency p50 / p95 ms there "
        "| stack cores | load gen. cores | frames late / dropped late (whole run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, camera in result["cameras"].items():
        cpu = camera.get("cpu") or {}
        at = next((step for step in camera["steps"] if step["users"] == camera["cameras_at_30fps"]), None)
        latency = f"{at['latency_ms_p50']:.0f} / {at['latency_ms_p95']:.0f}" if at else ""
        wire = camera.get("wire") or {}
        lines.append(
            f"| {name} | {camera['cameras_at_30fps']} | {camera['cameras_at_30fps_p5']} | {latency} | "
            f"{cpu.get('stack_cores')} | {cpu.get('loadgen_cores')} | "
            f"{wire.get('buffered_frames')} / {wire.get('dropped_late_frames')} of {wire.get('frames')} |"
        )
    (out / "scale.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure_scale(PROJECT_ROOT / "out" / "bench-scale", args.repeats, args.step_seconds)
    write(result, args.out)
    print((args.out / "scale.md").read_text())


if __name__ == "__main__":
    main()
