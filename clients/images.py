"""Still images in: the one place that turns uploaded bytes into RGB frames, safely.

The pixel count is read from the file's header (Pillow opens lazily) and checked *before* anything
is decoded, so a small file that declares a huge image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

# 40 megapixels: any camera's still; 12000 x 12000 (144 MP) is refused.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """Bytes that are not a usable image; ``code`` names the reason for API answers."""

    code = "not_an_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; ``ImageError`` if it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        if isinstance(error, Image.DecompressionBombError):
            raise ImageTooLargeError(f"image too large: {error}") from error
        raise ImageError("not a decodable image (PNG, JPEG, BMP, WebP...)") from error


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3]; refuses images over ``max_pixels`` before decoding."""
    if not data:
        raise ImageError("the image is empty")
    width, height = image_size(data)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels"
        )
    image = imdecode_rgb(data)
    if image is None:
        raise ImageError("not a decodable image (PNG, JPEG, BMP, WebP...)")
    return image


def imdecode_rgb(data: bytes) -> np.ndarray | None:
    """Encoded image bytes -> RGB uint8 [H, W, 3], or None when they do not decode (no size check)."""
    # Decoded straight to RGB (libjpeg-turbo's own output order): the same pixels as BGR and a swap,
    # without the swap's pass over the frame.
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
