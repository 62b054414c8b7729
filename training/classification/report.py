"""Record a classifier run's held-out figures and bare-engine latency in one results file.

    python -m training.classification.report --run-dir out/runs/returns_classifier \\
        --model returns_classifier [--results benchmarks/results/classifiers_training.json]

Reads what ``prodseg pipeline`` wrote into the run directory (``evaluation/evaluation.json``,
``train.json``, ``parity.json``, ``gate.json``), finds the published version whose ``model.onnx`` is
the run's, times the run's graph at batch 1 on ONNX Runtime and OpenVINO (the served runner's
``OnnxEngine``, as the benchmark suite's "bare engine"), and merges one entry per model into the
results JSON (written atomically).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from clients.atomic import write_text
from clients.contract import ModelContract, default_repository, served_engine
from clients.repository import versions
from training.export import engine_predictor


def engine_latency(
    onnx_path: Path, image: np.ndarray, runs: int = 200, openvino_precision: str = ""
) -> dict[str, dict[str, Any]]:
    """Batch-1 latency in ms (min, median, p95) of ONNX Runtime and OpenVINO on one image, run by
    the served runner's ``OnnxEngine`` (OpenVINO at the served config's precision)."""
    batch = np.ascontiguousarray(image[None])
    results = {}
    for name in ("onnxruntime", "openvino"):
        engine = engine_predictor(onnx_path, name, precision=openvino_precision)  # ONNX Runtime: always fp32
        for _ in range(20):  # warm-up: first calls allocate and compile
            engine(batch)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            engine(batch)
            times.append((time.perf_counter() - start) * 1000)
        results[name] = {
            "engine": engine.engine,
            "min_ms": round(float(np.min(times)), 3),
            "median_ms": round(float(np.median(times)), 3),
            "p95_ms": round(float(np.percentile(times, 95)), 3),
            "runs": runs,
        }
    return results


def published_version(onnx_path: Path, model_name: str, repository: Path) -> int | None:
    """The version of ``model_name`` whose model.onnx is byte-identical to ``onnx_path``, if any."""
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    for version in reversed(versions(repository / model_name)):
        candidate = repository / model_name / str(version) / "model.onnx"
        if candidate.is_file() and hashlib.sha256(candidate.read_bytes()).hexdigest() == digest:
            return version
    return None


def rule_auc(test_seed: int, count: int) -> float:
    """ROC AUC of the engagement rule's own score on the test split's noisy labels: the ceiling."""
    from datagen.engagement import sample_label
    from datagen.products import sample_seed
    from training.classification.metrics import roc_auc

    drawn = [sample_label(sample_seed(test_seed, index)) for index in range(count)]
    scores = np.array([properties.score() for properties, _ in drawn])
    return round(roc_auc(scores, np.array([label for _, label in drawn])), 4)


def summarise(run_dir: Path, model_name: str, repository: Path) -> dict[str, Any]:
    """One results entry: held-out figures, training cost, parity, gate, latency."""
    run_dir = Path(run_dir)

    def read(name: str) -> dict[str, Any]:
        path = run_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `prodseg pipeline` into {run_dir} first")
        return json.loads(path.read_text())

    evaluation, training = read("evaluation/evaluation.json"), read("train.json")
    contract = ModelContract.load(model_name, repository)
    image = np.random.default_rng(0).integers(0, 256, (*contract.input_size, 3), dtype=np.uint8)
    entry: dict[str, Any] = {
        "version": published_version(run_dir / "model.onnx", model_name, repository),
        "test_images": evaluation["images"],
        "engine": evaluation["engine"],
        "accuracy": evaluation["accuracy"],
        "macro_f1": evaluation["macro_f1"],
        "per_class_f1": evaluation["per_class_f1"],
    }
    for key in ("roc_auc", "average_precision", "threshold", "accuracy_at_threshold"):
        if key in evaluation:
            entry[key] = evaluation[key]
    if evaluation.get("binary"):
        entry["threshold_chosen_on"] = evaluation["binary"]["threshold_chosen_on"]
        entry["validation_images"] = evaluation["binary"]["validation_images"]
    data = read("data.json")
    if data.get("source") == "datagen.engagement":
        entry["rule_roc_auc_on_test"] = rule_auc(data["seeds"]["test"], evaluation["images"])
    entry |= {
        "training": {
            key: training.get(key)
            for key in ("params", "steps", "batch_size", "images_seen", "train_s", "images_per_s", "bf16")
        },
        "parity": read("parity.json"),
        "gate": read("gate.json").get("checks", []),
        "onnx_bytes": (run_dir / "model.onnx").stat().st_size,
        "latency_batch1_ms": engine_latency(
            run_dir / "model.onnx", image, openvino_precision=served_engine(repository, model_name).precision
        ),
        "run_dir": str(run_dir),
    }
    return entry


def record(results: Path, key: str, entry: dict[str, Any]) -> None:
    results = Path(results)
    merged = json.loads(results.read_text()) if results.is_file() else {}
    merged.setdefault("models", {})[key] = entry
    merged["measured"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    merged["note"] = (
        "Held-out test splits of the procedural generators, scored on the exported graph. Latency: the "
        "bare engine (OnnxEngine of model_repository/onnx_runner.py) at batch 1, on the shared 2-core "
        "machine while other work ran; compare only within one run."
    )
    write_text(results, json.dumps(merged, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.classification.report", description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repository", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/classifiers_training.json"))
    parser.add_argument("--key", default=None, help="the entry's name in the results (default: the model's)")
    args = parser.parse_args(argv)
    try:
        entry = summarise(args.run_dir, args.model, Path(args.repository or default_repository()))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    record(args.results, args.key or args.model, entry)
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
