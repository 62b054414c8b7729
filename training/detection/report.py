"""The detector's figures in one JSON: held-out mAP, per-class AP, parity, and bare-engine latency.

    python -m training.detection.report --run-dir out/runs/mask_detector_v1 \
        --out benchmarks/results/mask_detector_training.json

Latency is batch 1 on a held-out scene at the model's input size, for ONNX Runtime (fp32) and
OpenVINO (its CPU default precision), with all threads and with one, after warm-up: the bare engines
Triton's python backend wraps. Wall-clock numbers move with the machine's load (recorded beside them);
the CPU time per call of the one-thread engines is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from clients.atomic import write_text
from clients.contract import ModelContract
from datagen.faces import render_faces, scene_seed
from training.detection.parity import latency_ms


def build_report(run_dir: Path, repository: Path | None = None, repeats: int = 30) -> dict[str, Any]:
    from training.export import engine_predictor

    run_dir = Path(run_dir)
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    parity = json.loads((run_dir / "parity.json").read_text())
    training = json.loads((run_dir / "train.json").read_text())
    gate = json.loads((run_dir / "gate.json").read_text()) if (run_dir / "gate.json").is_file() else None
    contract = ModelContract.load("mask_detector", repository)
    image = contract.to_model_input(render_faces(scene_seed("test", 0), split="test").image)
    latency = {
        f"{engine}_{threads or 'all'}_threads": latency_ms(
            engine_predictor(run_dir / "model.onnx", engine, threads), image, repeats
        )
        for engine in ("onnxruntime", "openvino")
        for threads in (0, 1)
    }
    return {
        "model": "mask_detector",
        "input": [contract.height, contract.width, 3],
        "held_out": {
            "split": "test: procedural faces of identities never seen in training",
            "images": evaluation["images"],
            "objects": evaluation["objects"],
            "engine": evaluation["engine"],
            "map50": evaluation["map50"],
            "map50_95": evaluation["map50_95"],
            "per_class_ap50": evaluation["per_class_ap50"],
            "per_class_ap50_95": evaluation["per_class_ap50_95"],
        },
        "parity": parity,
        "gate_passed": None if gate is None else gate.get("passed"),
        "training": {
            k: training.get(k)
            for k in (
                "steps",
                "batch_size",
                "images_seen",
                "train_s",
                "images_per_s",
                "train_images",
                "stopped_by",
                "schedule_note",
                "params",
                "final_loss",
                "bf16",
                "threads",
            )
        },
        "latency_batch1_ms": latency,
        "onnx_bytes": (run_dir / "model.onnx").stat().st_size,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mask_detector_training.json"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--repository", type=Path, default=None, help="default: this checkout's")
    args = parser.parse_args(argv)
    report = build_report(args.run_dir, args.repository, args.repeats)
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
