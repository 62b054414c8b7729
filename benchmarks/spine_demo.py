"""Run the demo several times and record medians: video job, gRPC->Triton and bare-engine frames/s.

``.venv/bin/python -m benchmarks.spine_demo [REPEATS]`` writes benchmarks/results/spine_demo.json
and spine_demo.md. The load-and-performance suite (issue 5) supersedes this first measurement.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

from rich.console import Console

from prodseg.demo import run_demo

RESULTS = Path(__file__).parent / "results"
KEYS = ("fps", "triton_grpc_fps", "engine_fps", "serving_efficiency", "triton_vs_engine", "miou")


def main(repeats: int = 3) -> None:
    console = Console(stderr=True)
    runs = [run_demo(Path("out/bench-demo"), num_frames=300, seed=7, console=console) for _ in range(repeats)]
    result = {
        "what": "prodseg demo: 300-frame 640x384 shelf video through the gateway and embedded Triton (CPU)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "triton_version": runs[0]["triton_version"],
        "model": runs[0]["model"],
        "repeats": repeats,
        "median": {key: statistics.median(run[key] for run in runs) for key in KEYS},
        "runs": [{key: run[key] for key in KEYS} for run in runs],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spine_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    median = result["median"]
    rows = [
        (
            "video job via gateway (decode, infer, overlay, encode)",
            f"{median['fps']:.1f}",
            f"{median['serving_efficiency']:.2f}",
        ),
        (
            "gRPC stream -> Triton (4 in flight, no video)",
            f"{median['triton_grpc_fps']:.1f}",
            f"{median['triton_vs_engine']:.2f}",
        ),
        ("bare engine (OpenVINO in-process, batch 1)", f"{median['engine_fps']:.1f}", "1.00"),
    ]
    table = [
        "| path | frames/s | / bare engine |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    (RESULTS / "spine_demo.md").write_text(
        f"# Spine demo, median of {repeats} runs "
        f"({os.cpu_count()} CPUs, Triton {result['triton_version']})\n\n"
        + "\n".join(table)
        + f"\n\nmIoU of returned masks vs ground truth: {median['miou']:.3f}\n"
    )
    console.print((RESULTS / "spine_demo.md").read_text())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
