"""Triton python-backend JPEG wire for CPU nodes: ``<model>_jpeg`` as one step instead of three.

On CPU the SDK sends JPEG frames to the model itself (its cpu config takes ``jpeg``: onnx_runner.py),
which saves this stub's hop; this wire serves clients that call ``<model>_jpeg`` by name, and its
readiness tells clients that the server has the codecs (``clients.wire.jpeg_route``).

``configs/cpu.pbtxt`` of each ``<model>_jpeg`` runs this file (each wire folder links
``1/model.py -> ../../jpeg_wire.py``): it decodes the request's JPEGs, runs the model it serves
through BLS (``model_version`` -1: the newest version Triton serves, as the ensemble's steps do) and,
for a segmentation, writes each class mask as a PNG. Same inputs, outputs and errors as the ensemble
of ``config.pbtxt`` (jpeg_decoder -> model -> mask_encoder), whose code it runs; on a CPU the
ensemble's two extra python stubs cost more than the decoding and encoding themselves (each hop
copies the frame through shared memory and wakes a process: ``benchmarks/results/wire.json``).
GPU nodes keep the ensemble (``jpeg_decoder/configs/gpu.pbtxt`` decodes with nvJPEG).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:  # present only inside Triton's python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tests outside Triton
    pb_utils = None

# The SDK's names (clients.wire, clients.contract), which a Triton pod cannot import: a test compares them.
JPEG_INPUT, MODEL_INPUT = "jpeg", "images"  # the wire's input, the image models' input
PNG_MASKS, MASKS = "masks_png", "masks"  # a segmentation wire's output, and the model's it encodes


def model_outputs(wire_outputs: list[str]) -> list[str]:
    """The served model's outputs a wire asks for: its own, the PNG masks from the class masks."""
    return [MASKS if name == PNG_MASKS else name for name in wire_outputs]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import cv2

        cv2.setNumThreads(1)  # Triton runs the instances in parallel; OpenCV's own threads only contend
        # The codec steps' own code (jpeg_decoder/model.py, mask_encoder/model.py), from the repository
        # this wire was loaded from: one home for each, and the chart's sync copies files, not links.
        sys.path.insert(0, str(Path(args["model_repository"]).parent))
        decoder, encoder = (
            importlib.import_module("jpeg_decoder.model"),
            importlib.import_module("mask_encoder.model"),
        )
        self.frame_error, self.decode_jpeg_rows = decoder.FrameError, decoder.decode_jpeg_rows
        self.encode_png = encoder.encode_png
        config = json.loads(args["model_config"])
        self.serves = config["parameters"]["serves"]["string_value"]
        self.outputs = [output["name"] for output in config["output"]]
        self.requested = model_outputs(self.outputs)

    async def execute(self, requests: list) -> list:
        # Each request decoded alone (a bad frame fails only its own request) and sent on as a BLS
        # request of its own, all in flight at once: the model's dynamic batcher and instances share
        # them out exactly as they do raw requests (one call for the lot would keep one instance busy
        # while the other idles).
        responses: list = [None] * len(requests)
        calls: list[tuple[int, Any]] = []
        for index, request in enumerate(requests):
            rows = pb_utils.get_input_tensor_by_name(request, JPEG_INPUT).as_numpy()
            try:
                images = self.decode_jpeg_rows(rows)
            except self.frame_error as error:
                refused = pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                responses[index] = pb_utils.InferenceResponse(error=refused)
                continue
            call = pb_utils.InferenceRequest(
                model_name=self.serves,
                requested_output_names=self.requested,
                inputs=[pb_utils.Tensor(MODEL_INPUT, images)],
            )
            calls.append((index, call.async_exec()))
        results = await asyncio.gather(*(call for _, call in calls))
        for (index, _), result in zip(calls, results, strict=True):
            responses[index] = self._response(result)
        return responses

    def _response(self, result) -> Any:
        """The wire's answer from the model's: its outputs (masks as PNG), or its error (e.g. a frame
        of the wrong size), passed on with its code."""
        if result.has_error():
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(result.error().message(), result.error().code())
            )
        tensors = [
            pb_utils.Tensor(
                name, self._encoded(name, pb_utils.get_output_tensor_by_name(result, source).as_numpy())
            )
            for name, source in zip(self.outputs, self.requested, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _encoded(self, name: str, array: np.ndarray) -> np.ndarray:
        if name != PNG_MASKS:
            return array
        return np.array([[self.encode_png(mask)] for mask in array], dtype=np.object_)
