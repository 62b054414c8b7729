"""One JSON of what a pipeline run measured: held-out metrics, parity, training time, size, speed.

``python -m training.run_report RUN_DIR OUT.json`` reads the run directory's data.json, train.json,
parity.json, evaluation/evaluation.json and gate.json, times the exported graph on the serving
runner's ``OnnxEngine`` (OpenVINO and ONNX Runtime, batch 1, one thread, as configs/cpu.pbtxt serves
it) and writes the summary with :mod:`clients.atomic`. Timings on shared cores vary by 2x between
runs: the machine's load average is recorded beside them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from clients.atomic import write_text
from training.export import engine_predictor


def engine_fps(
    onnx_path: Path, height: int, width: int, engine: str, seconds: float = 5.0
) -> dict[str, float]:
    """Frames per second of batch-1 inference after a warm-up (median latency too)."""
    run = engine_predictor(onnx_path, engine, threads=1)
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), np.uint8)
    for _ in range(3):
        run(image)
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        run(image)
        latencies.append(time.perf_counter() - tick)
    return {
        "fps": round(len(latencies) / sum(latencies), 1),
        "median_ms": round(1000 * float(np.median(latencies)), 2),
        "runs": len(latencies),
    }


def run_report(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)

    def read(name: str) -> dict[str, Any]:
        return json.loads((run_dir / name).read_text())

    evaluation, train, parity = read("evaluation/evaluation.json"), read("train.json"), read("parity.json")
    data, gate = read("data.json"), read("gate.json")
    onnx_path = run_dir / "model.onnx"
    size = evaluation.get("input_size")
    height, width = size if size else _input_size(onnx_path)
    return {
        "run_dir": str(run_dir),
        "held_out": {
            "images": evaluation["images"],
            "engine": evaluation["engine"],
            **{k: v for k, v in evaluation.items() if isinstance(v, int | float) and k != "images"},
            **{k: v for k, v in evaluation.items() if k.startswith("per_class_")},
        },
        "data": {k: v for k, v in data.items() if k != "spec"} | {"spec": data["spec"]},
        "training": train,
        "parity": parity,
        "gate": {"passed": gate["passed"], "checks": gate["checks"]},
        "onnx": {"bytes": onnx_path.stat().st_size, "megabytes": round(onnx_path.stat().st_size / 1e6, 2)},
        "engine_batch1_one_thread": {
            engine: engine_fps(onnx_path, height, width, engine) for engine in ("openvino", "onnxruntime")
        },
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _input_size(onnx_path: Path) -> tuple[int, int]:
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value), int(dims[2].dim_value)


def main() -> None:
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    report = run_report(run_dir)
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["held_out"], indent=2))


if __name__ == "__main__":
    main()
