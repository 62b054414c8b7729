"""The serving graph on disk: ONNX export, parity with PyTorch, and bare-engine latency.

:func:`export_onnx` writes :class:`ServingClassifier` (uint8 ``images [N, H, W, 3]`` in,
``probabilities [N, C]`` out; the batch axis dynamic) and slims it. :func:`check_parity` runs the
same held-out images through PyTorch fp32, ONNX Runtime and the engine Triton's CPU config serves
(``OnnxEngine`` of ``model_repository/onnx_runner.py``, OpenVINO at its CPU default precision), and
reports the largest probability difference and how often the top class agrees.
:func:`engine_latency` times each engine at batch 1, as the benchmark suite's "bare engine" does.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.atomic import atomic_path
from training.classification.model import ServingClassifier

INPUT, OUTPUT = "images", "probabilities"
_RUNNER = Path(__file__).resolve().parents[2] / "model_repository" / "onnx_runner.py"


def onnx_engine(onnx_path: Path, engine: str, threads: int = 0):
    """The served runner's ``OnnxEngine`` (one home; loaded from the repository, not copied)."""
    spec = importlib.util.spec_from_file_location("prodseg_onnx_runner", _RUNNER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.OnnxEngine(Path(onnx_path), engine, threads)


def torch_predictor(model: ServingClassifier):
    model = model.cpu().eval()

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {OUTPUT: model(torch.from_numpy(np.ascontiguousarray(images))).numpy()}

    return predict


def export_onnx(model: ServingClassifier, path: Path, height: int, width: int, opset: int = 17) -> None:
    """Export with a dynamic batch axis, slim, check, and move into place atomically."""
    import onnx
    import onnxslim

    model = model.cpu().eval()
    example = torch.zeros((1, height, width, 3), dtype=torch.uint8)
    with atomic_path(path) as partial:
        # The legacy exporter: about 1 s here against 5-10 s for dynamo=True (shared NOTES).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(partial),
                opset_version=opset,
                dynamo=False,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            )
        slimmed = onnxslim.slim(onnx.load(str(partial)))
        onnx.checker.check_model(slimmed, full_check=True)
        onnx.save(slimmed, str(partial))


@dataclass(frozen=True)
class Parity:
    """Engines against PyTorch fp32 on the same images."""

    images: int
    onnxruntime_max_abs_diff: float
    onnxruntime_top1_agreement: float
    openvino_max_abs_diff: float
    openvino_top1_agreement: float
    openvino_precision: str  # OpenVINO's CPU default (bf16 where the CPU has it), as served

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    model: ServingClassifier, onnx_path: Path, images: np.ndarray, batch_size: int = 16
) -> Parity:
    if not len(images):
        raise ValueError("parity needs at least one image")
    reference = torch_predictor(model)
    ort = onnx_engine(onnx_path, "onnxruntime")
    openvino = onnx_engine(onnx_path, "openvino")
    diffs = {"onnxruntime": 0.0, "openvino": 0.0}
    agree = {"onnxruntime": 0, "openvino": 0}
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        expected = reference(batch)[OUTPUT]
        for name, engine in (("onnxruntime", ort), ("openvino", openvino)):
            got = engine(batch)[OUTPUT]
            diffs[name] = max(diffs[name], float(np.abs(got - expected).max()))
            agree[name] += int((got.argmax(1) == expected.argmax(1)).sum())
    precision = "f32"
    if openvino.engine == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(onnx_path), "CPU")
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return Parity(
        images=len(images),
        onnxruntime_max_abs_diff=round(diffs["onnxruntime"], 8),
        onnxruntime_top1_agreement=round(agree["onnxruntime"] / len(images), 6),
        openvino_max_abs_diff=round(diffs["openvino"], 6),
        openvino_top1_agreement=round(agree["openvino"] / len(images), 6),
        openvino_precision=precision if openvino.engine == "openvino" else "unavailable (ORT fallback)",
    )


def engine_latency(onnx_path: Path, image: np.ndarray, runs: int = 100, threads: int = 0) -> dict[str, dict]:
    """Batch-1 latency (ms: min, median, p95) of ONNX Runtime and OpenVINO on one image."""
    batch = np.ascontiguousarray(image[None])
    results = {}
    for name in ("onnxruntime", "openvino"):
        engine = onnx_engine(onnx_path, name, threads)
        for _ in range(10):  # warm-up: first calls allocate and compile
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
