"""Triton python-backend step of the JPEG wire: JPEG bytes in, RGB pixels out (OpenCV).

Input ``jpeg``: UINT8 ``[N, L]``, one JPEG per row; rows shorter than the longest are padded with
zeros after the JPEG's end marker (decoders stop there), so several frames fit one tensor. Output
``images``: UINT8 ``[N, H, W, 3]`` RGB, which the ensemble hands to the model (``<model>_jpeg``,
see ``clients/wire.py``). Clients send frames already at the model's size, so this only decodes.

A frame that does not decode (OpenCV refuses corrupt and truncated JPEGs alike) fails its own
request with a clear message; the other requests of the batch and the server go on. Bytes after the
end-of-image marker (zero padding, a camera's trailer) are ignored, as decoders do.

``decode_jpeg_rows`` has no Triton dependency, so tests and benchmarks run exactly this code.
"""

from __future__ import annotations

import cv2
import numpy as np

try:  # present only inside Triton's python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tests and benchmarks outside Triton
    pb_utils = None

START_OF_IMAGE, END_OF_IMAGE = b"\xff\xd8", b"\xff\xd9"


class FrameError(ValueError):
    """One request's frames cannot be decoded; the message says which and why."""


def decode_jpeg_rows(rows: np.ndarray) -> np.ndarray:
    """UINT8 [N, L] zero-padded JPEGs -> RGB UINT8 [N, H, W, 3] (every frame the same size)."""
    if rows.dtype != np.uint8 or rows.ndim != 2:
        raise FrameError(f"expected UINT8 [N, L] JPEG bytes, got {rows.dtype} {list(rows.shape)}")
    images = []
    for index, row in enumerate(rows):
        data = row.tobytes().rstrip(b"\x00")
        if not data.startswith(START_OF_IMAGE):
            raise FrameError(f"frame {index} is not a JPEG (no start-of-image marker)")
        image = _decode_rgb(data)
        if image is None:
            why = "corrupt" if data.endswith(END_OF_IMAGE) else "truncated (no end-of-image marker)"
            raise FrameError(f"frame {index} does not decode: the JPEG is {why}")
        images.append(image)
    if len({image.shape for image in images}) > 1:
        raise FrameError(f"the frames of one request differ in size: {[i.shape for i in images]}")
    return images[0][np.newaxis] if len(images) == 1 else np.stack(images)  # one frame: no copy


def _decode_rgb(data: bytes) -> np.ndarray | None:
    # OpenCV >= 4.10 has libjpeg-turbo write RGB itself: the same pixels as BGR and a swap, ~16% sooner
    # on a 640x384 shelf frame (benchmarks/results/wire_codec_profile.json). Older OpenCV swaps.
    buffer = np.frombuffer(data, np.uint8)
    if hasattr(cv2, "IMREAD_COLOR_RGB"):
        return cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        cv2.setNumThreads(1)  # one frame at a time per instance; Triton runs the instances in parallel

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # each request alone: a bad frame fails only its own request
            rows = pb_utils.get_input_tensor_by_name(request, "jpeg").as_numpy()
            try:
                images = decode_jpeg_rows(rows)
            except FrameError as error:
                # INVALID_ARGUMENT, not INTERNAL: the frame is at fault, and a retry would not help.
                refused = pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=refused))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("images", images)]))
        return responses
