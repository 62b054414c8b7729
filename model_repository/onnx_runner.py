"""Triton python-backend runner for every model of this repository: model.onnx on OpenVINO or ONNX
Runtime, returning every output the model's config declares (by name).

Used by ``configs/cpu.pbtxt`` (the embedded server and CPU-only nodes), where Triton has no native
ONNX/OpenVINO backend. Each model folder links ``model.py -> ../onnx_runner.py`` and each version
folder ``model.py -> ../model.py``, so the runner has one home and versions differ only in their
``model.onnx``. Pre- and post-processing (normalisation, argmax, decode + NMS, softmax) are in the
graph, so this file only moves tensors.

``OnnxEngine`` has no Triton dependency, so benchmarks time exactly the engine that Triton serves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

try:  # present only inside Triton's python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by benchmarks and tests outside Triton
    pb_utils = None


class OnnxEngine:
    """Runs an exported graph: uint8 [N, H, W, 3] images in, ``{output name: array}`` out."""

    def __init__(
        self, model_path: Path, engine: str = "openvino", threads: int = 0, precision: str = ""
    ) -> None:
        """``precision``: OpenVINO's inference precision ("f32", "bf16", "f16"); empty: the CPU's default
        (bf16 where the CPU has it). ONNX Runtime always runs fp32."""
        self.model_path = Path(model_path)
        self.engine = engine
        if engine == "openvino":
            try:
                self._run = self._load_openvino(threads, precision)
                return
            except ImportError:
                self.engine = "onnxruntime"  # OpenVINO is optional; ONNX Runtime is the fallback
        if self.engine != "onnxruntime":
            raise ValueError(f"unknown engine {engine!r}: expected 'openvino' or 'onnxruntime'")
        self._run = self._load_onnxruntime(threads)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(images)

    def _load_openvino(self, threads: int, precision: str):
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            # Several Triton instances each get few threads; unpinned, so they spread over the cores.
            config |= {"INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(str(self.model_path), "CPU", config)
        request = compiled.create_infer_request()
        outputs = [(output.get_any_name(), output) for output in compiled.outputs]

        def run(images: np.ndarray) -> dict[str, np.ndarray]:
            result = request.infer({0: images}, share_inputs=True)
            return {name: result[output].copy() for name, output in outputs}

        return run

    def _load_onnxruntime(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        names = [output.name for output in session.get_outputs()]

        def run(images: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(names, {input_name: images}), strict=True))

        return run


class TritonPythonModel:
    """Triton's python-backend lifecycle: initialize once per instance, execute per batch of requests."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        model_path = version_dir / parameters.get("model_filename", "model.onnx")
        threads = int(os.environ.get("PRODSEG_ENGINE_THREADS", parameters.get("openvino_threads", "0")))
        precision = parameters.get("openvino_precision", "")
        self.engine = OnnxEngine(model_path, parameters.get("engine", "openvino"), threads, precision)
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {self.engine.engine} on {model_path.name}, "
            f"threads={threads or 'auto'}, precision={precision or 'default'}"
        )

    def execute(self, requests: list) -> list:
        # Requests the dynamic batcher grouped run as one engine call, then are split back.
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        outputs = self.engine(np.concatenate(batches) if len(batches) > 1 else batches[0])
        responses, start = [], 0
        for batch in batches:
            end = start + len(batch)
            tensors = [pb_utils.Tensor(name, outputs[name][start:end]) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
