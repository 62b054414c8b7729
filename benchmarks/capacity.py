"""Capacity model: Triton replicas for N cameras x F FPS, from measured and published throughput.

``python -m benchmarks.capacity`` reads benchmarks/results/suite.json (this machine's per-replica
frames/s) and benchmarks/results/loadtest_embedded/report.json (cameras one replica sustained), and
writes capacity.json and capacity.md. GPU rows use published anchors until a GPU measurement
exists (none was available to the sessions that wrote this): they are estimates, and say so.

replicas = ceil(N * F / (per_replica_fps * utilisation)). The utilisation target (0.7) leaves
headroom for bursts and for the dynamic batcher's queue delay: the same headroom the HPA keeps by
targeting queue time per request instead of running replicas to saturation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
UTILISATION = 0.7
DEMANDS = [(10, 30), (100, 30), (100, 60), (120, 30)]

# Published anchors (see ../shared/NOTES.md), per GPU with TensorRT FP16. Our model costs 4.0 GFLOPs
# a 384x640 frame against YOLOv8n-seg's 12.6 at 640x640, but a full-resolution UNet decoder is
# memory-bound, so the anchors are used unscaled: a conservative estimate.
GPU_ANCHORS = {
    "A100 (YOLOv8n-seg TRT FP16, batch 8: 0.40 ms/img)": 2500.0,
    "T4 (YOLO11n-seg TRT: 1.8 ms/img)": 1.0 / 0.0018,
}


def replicas(cameras: int, fps: float, per_replica_fps: float) -> int:
    return math.ceil(cameras * fps / (per_replica_fps * UTILISATION))


def main() -> None:
    suite = json.loads((RESULTS / "suite.json").read_text())
    load = json.loads((RESULTS / "loadtest_embedded" / "report.json").read_text())
    grpc = suite["medians"]["triton_grpc"]
    camera_path = max(v["fps"] for k, v in grpc.items() if k.endswith("x1"))  # one frame per request
    rows = {
        f"embedded CPU replica, 2 cores (measured: {camera_path:.0f} frames/s)": camera_path,
        **{f"{name} [estimate]": fps for name, fps in GPU_ANCHORS.items()},
    }
    table = {name: {f"{n}x{f}": replicas(n, f, fps) for n, f in DEMANDS} for name, fps in rows.items()}
    result = {
        "utilisation_target": UTILISATION,
        "per_replica_fps": rows,
        "cameras_sustained_at_30fps_by_one_embedded_replica": load["users_sustained_at_target"],
        "replicas": table,
    }
    (RESULTS / "capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    header = "| replica | frames/s | " + " | ".join(f"{n} cams x {f} FPS" for n, f in DEMANDS) + " |"
    lines = [
        "# Capacity: Triton replicas needed (utilisation target 0.7)",
        "",
        header,
        "|---|---|" + "---|" * len(DEMANDS),
        *[
            f"| {name} | {rows[name]:.0f} | " + " | ".join(str(v) for v in counts.values()) + " |"
            for name, counts in table.items()
        ],
        "",
        f"Measured: one embedded replica sustains {load['users_sustained_at_target']} cameras at 30 FPS "
        "(p5 FPS per camera >= 28.5, drops < 1%; benchmarks/results/loadtest_embedded).",
    ]
    (RESULTS / "capacity.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "capacity.md").read_text())


if __name__ == "__main__":
    main()
