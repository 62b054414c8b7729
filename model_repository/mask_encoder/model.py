"""Triton python-backend step of the JPEG wire: class-id masks in, one PNG per mask out.

Input ``masks``: UINT8 ``[N, H, W]`` (a segmentation model's output). Output ``masks_png``: BYTES
``[N, 1]``, a greyscale 8-bit PNG per mask that any PNG reader decodes to the identical array
(``clients.masks.decode_mask_png`` in the SDK).

The PNG is written with numpy and zlib only (no OpenCV), so this step also runs in the stock NGC
Triton image. Settings chosen by measurement (``benchmarks/wire_bench.py`` records the sweep): the
"up" row filter turns a class mask into rows of zeros except at edges that move, and zlib's RLE
strategy compresses those runs smaller than deflate at level 6, close to OpenCV's level 9 at a
thirtieth of its time (a 640x384 shelf mask: ~6 KB of 246 KB in ~0.6 ms; OpenCV at level 1: ~9 KB in
~1.8 ms, at level 9: ~5 KB in ~20 ms).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

try:  # present only inside Triton's python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tests and benchmarks outside Triton
    pb_utils = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_FILTER, SUB_FILTER, UP_FILTER = 0, 1, 2  # PNG row filters (PNG spec, section 9.2)


def encode_png(
    mask: np.ndarray, row_filter: int = UP_FILTER, strategy: int = zlib.Z_RLE, level: int = 6
) -> bytes:
    """A UINT8 [H, W] mask as a greyscale 8-bit PNG."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"a mask is UINT8 [H, W], got {mask.dtype} {list(mask.shape)}")
    height, width = mask.shape
    rows = np.empty((height, width + 1), np.uint8)  # each row: its filter byte, then the filtered bytes
    rows[:, 0] = row_filter
    if row_filter == UP_FILTER:
        rows[0, 0] = NO_FILTER  # the first row has nothing above it
        rows[0, 1:] = mask[0]
        np.subtract(mask[1:], mask[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps, as PNG's does
    elif row_filter == SUB_FILTER:
        rows[:, 1] = mask[:, 0]
        np.subtract(mask[:, 1:], mask[:, :-1], out=rows[:, 2:])
    else:
        rows[:, 1:] = mask
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    pixels = compressor.compress(rows.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            masks = pb_utils.get_input_tensor_by_name(request, "masks").as_numpy()
            pngs = np.array([[encode_png(mask)] for mask in masks], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("masks_png", pngs)]))
        return responses
