"""Per-frame class masks on disk: a zip of lossless PNGs, ``000000.png``, ``000001.png``, ...

The gateway returns a video job's masks in this format and the shelf generator writes its ground
truth in it, so evaluation reads both the same way. Any tool that opens zip and PNG reads it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from clients.atomic import atomic_path


class MaskArchiveWriter:
    """Append masks frame by frame; the archive appears at ``path`` only once it is complete."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._atomic = atomic_path(self.path)
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> MaskArchiveWriter:
        # PNG is already compressed: store, don't deflate again.
        self._zip = zipfile.ZipFile(self._atomic.__enter__(), "w", compression=zipfile.ZIP_STORED)
        return self

    def write(self, mask: np.ndarray) -> None:
        assert self._zip is not None, "use MaskArchiveWriter as a context manager"
        self._zip.writestr(f"{self.count:06d}.png", encode_mask_png(mask))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._zip is not None
        self._zip.close()
        self._atomic.__exit__(exc_type, exc, tb)


def read_mask_archive(path: Path) -> Iterator[np.ndarray]:
    """Yield the masks of an archive in frame order."""
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            yield decode_mask_png(archive.read(name))


def encode_mask_png(mask: np.ndarray) -> bytes:
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask is uint8 [H, W], got {mask.dtype} {mask.shape}")
    ok, png = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def decode_mask_png(data: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise ValueError("not a single-channel PNG mask")
    return mask
