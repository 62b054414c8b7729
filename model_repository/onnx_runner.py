"""Triton python-backend runner for every model of this repository: model.onnx on OpenVINO or ONNX
Runtime, returning every output the model's config declares (by name).

Used by ``configs/cpu.pbtxt`` (the embedded server and CPU-only nodes), where Triton has no native
ONNX/OpenVINO backend. Each model folder links ``model.py -> ../onnx_runner.py`` and each version
folder ``model.py -> ../model.py``, so the runner has one home and versions differ only in their
``model.onnx``. Pre- and post-processing (normalisation, argmax, decode + NMS, softmax) are in the
graph, so this file only moves tensors.

A config that declares the optional input ``jpeg`` (the CPU configs: ``clients/contract.py``) also
takes frames as JPEG and returns a segmentation's masks as PNG (``masks_png``), with the JPEG wire's
own codec code (``jpeg_decoder/model.py``, ``mask_encoder/model.py``): decoded, inferred and encoded
in this one process, a JPEG frame costs the server what a raw one does, where a separate wire model
in front costs a python-backend hop per frame (``benchmarks/results/wire_experiments.json``). Each
request sends ``images`` or ``jpeg``; the requests of one batch run as one engine call either way.

``OnnxEngine`` has no Triton dependency, so benchmarks time exactly the engine that Triton serves.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np

try:  # present only inside Triton's python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by benchmarks and tests outside Triton
    pb_utils = None

# The SDK's names (clients.contract), which a Triton pod cannot import: a test compares them.
JPEG_INPUT, PNG_MASKS, MASKS = "jpeg", "masks_png", "masks"


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
        image = next(tensor for tensor in config["input"] if tensor["name"] != JPEG_INPUT)
        self.input_name, self.image_dims = image["name"], [int(d) for d in image["dims"]]
        self.output_names = [output["name"] for output in config["output"] if output["name"] != PNG_MASKS]
        self.takes_jpeg = any(tensor["name"] == JPEG_INPUT for tensor in config["input"])
        self.no_codecs = ""  # why this process cannot decode JPEG frames, if it cannot
        if self.takes_jpeg:
            self._load_codecs(Path(args["model_repository"]).parent)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        model_path = version_dir / parameters.get("model_filename", "model.onnx")
        threads = int(os.environ.get("PRODSEG_ENGINE_THREADS", parameters.get("openvino_threads", "0")))
        precision = parameters.get("openvino_precision", "")
        self.engine = OnnxEngine(model_path, parameters.get("engine", "openvino"), threads, precision)
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {self.engine.engine} on {model_path.name}, "
            f"threads={threads or 'auto'}, precision={precision or 'default'}, jpeg={self.takes_jpeg}"
        )
        if self.no_codecs:
            pb_utils.Logger.log_warn(f"{args['model_name']}: JPEG frames are refused: {self.no_codecs}")

    def _load_codecs(self, repository: Path) -> None:
        """The JPEG wire's codec steps' own code, from the repository this model was loaded from (one
        home for each). Without it (no OpenCV in this Triton image, a repository holding no
        ``jpeg_decoder``/``mask_encoder``) the model still serves raw frames and refuses JPEG ones."""
        try:
            import cv2

            sys.path.insert(0, str(repository))
            decoder = importlib.import_module("jpeg_decoder.model")
            encoder = importlib.import_module("mask_encoder.model")
        except ImportError as error:
            self.no_codecs = (
                f"{error} (the JPEG codecs need OpenCV and the repository's jpeg_decoder/, mask_encoder/)"
            )
            return
        cv2.setNumThreads(1)  # Triton runs the instances in parallel; OpenCV's own threads only contend
        self.frame_error, self.decode_jpeg_rows = decoder.FrameError, decoder.decode_jpeg_rows
        self.encode_png = encoder.encode_png

    def execute(self, requests: list) -> list:
        # Requests the dynamic batcher grouped run as one engine call, then are split back. A request
        # whose JPEGs do not decode, or decode to the wrong size, fails alone.
        responses: list = [None] * len(requests)
        batches: list[tuple[int, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                batches.append((index, self._images(request)))
            except ValueError as error:  # FrameError is one
                refused = pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                responses[index] = pb_utils.InferenceResponse(error=refused)
        if not batches:
            return responses
        arrays = [images for _, images in batches]
        outputs = self.engine(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        start = 0
        for index, images in batches:
            end = start + len(images)
            requested = self._answered(requests[index])
            tensors = [pb_utils.Tensor(name, self._output(name, outputs, start, end)) for name in requested]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = end
        return responses

    def _answered(self, request) -> list[str]:
        """The outputs a request gets: those it asks for; of the class masks and their PNGs, one only
        when it asks for both (as a request naming no outputs does): PNGs for JPEG frames, raw masks
        for raw frames, so each wire gets back what it sent."""
        requested = request.requested_output_names() or self.output_names
        if MASKS in requested and PNG_MASKS in requested:
            from_jpeg = pb_utils.get_input_tensor_by_name(request, self.input_name) is None
            requested = [name for name in requested if name != (MASKS if from_jpeg else PNG_MASKS)]
        return list(requested)

    def _images(self, request) -> np.ndarray:
        """The request's frames as uint8 [N, H, W, 3]: its ``images``, or its ``jpeg`` rows decoded."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is not None:
            return tensor.as_numpy()
        jpeg = pb_utils.get_input_tensor_by_name(request, JPEG_INPUT) if self.takes_jpeg else None
        if jpeg is None:
            raise ValueError(f"a request sends {self.input_name!r} or {JPEG_INPUT!r}, this one neither")
        if self.no_codecs:
            raise ValueError(f"this server cannot decode JPEG frames, send raw pixels: {self.no_codecs}")
        images = self.decode_jpeg_rows(jpeg.as_numpy())
        if list(images.shape[1:]) != self.image_dims:
            raise self.frame_error(
                f"unexpected shape for the decoded frames {list(images.shape)}: "
                f"the model takes {[-1, *self.image_dims]} (send frames at the model's size)"
            )
        return images

    def _output(self, name: str, outputs: dict[str, np.ndarray], start: int, end: int) -> np.ndarray:
        if name == PNG_MASKS:
            return np.array([[self.encode_png(mask)] for mask in outputs[MASKS][start:end]], dtype=np.object_)
        return outputs[name][start:end]
