"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.gateway.schemathesis_hooks``): real media for the
media types the gateway's OpenAPI document declares for its uploads.

The document says a part 'file' is ``image/png, image/jpeg, image/bmp, image/webp`` (or a video type);
schemathesis cannot draw such bytes itself, so these strategies encode random pictures and short
videos. Random bytes that are not media are the negative tests' business, not the positive ones'.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import schemathesis
from hypothesis import strategies as st

from clients.video import VideoSink


@st.composite
def _pictures(draw, extension: str) -> bytes:
    height = draw(st.integers(1, 96))
    width = draw(st.integers(1, 96))
    seed = draw(st.integers(0, 2**16))
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(extension, image)
    assert ok
    return data.tobytes()


def _videos() -> list[bytes]:
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames, size in ((1, 32), (3, 64), (5, 48)):
            path = Path(tmp) / f"{frames}.mp4"
            with VideoSink(path, fps=10) as sink:
                for i in range(frames):
                    sink.write(np.full((size, size, 3), 40 * i, np.uint8))
            clips.append(path.read_bytes())
    return clips


for media_type, extension in (
    ("image/png", ".png"),
    ("image/jpeg", ".jpg"),
    ("image/bmp", ".bmp"),
    ("image/webp", ".webp"),
):
    schemathesis.openapi.media_type(media_type, _pictures(extension))
schemathesis.openapi.media_type("video/mp4", st.sampled_from(_videos()))
