"""Video I/O: the one place that decodes and encodes video (PyAV, H.264).

Composable in the style of ``supervision``: ``frames()`` is a generator of RGB frames, ``VideoSink``
writes RGB frames to an H.264 file that appears only once it is complete, and ``probe()`` reads
what a file holds or says clearly why it is not a video.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from clients.atomic import atomic_path


class VideoError(ValueError):
    """The file is not a decodable video."""


class NotAVideoError(VideoError):
    """No container format or no video stream could be found: not a video at all."""


class CorruptVideoError(VideoError):
    """A video container whose frames do not decode."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # from the container; 0 when it does not say


def probe(path: Path) -> VideoInfo:
    """Check that ``path`` is a video whose first frame decodes; raise a ``VideoError`` saying why not."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error.__class__.__name__  # no server paths in messages
        raise NotAVideoError(f"not a video: no known container format ({reason})") from error
    with container:
        if _is_image_format(container.format.name):
            raise NotAVideoError(f"not a video: the file is a still image ({container.format.name})")
        if not container.streams.video:
            raise NotAVideoError("not a video: the file has no video stream")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as error:
            reason = getattr(error, "strerror", None) or error.__class__.__name__
            raise CorruptVideoError(f"corrupt video: the first frame does not decode ({reason})") from error
        if first is None:
            raise CorruptVideoError("corrupt video: the video stream has no decodable frame")
        rate = stream.average_rate or stream.guessed_rate or 30
        return VideoInfo(first.width, first.height, float(rate), stream.frames or 0)


def _is_image_format(format_name: str) -> bool:
    # FFmpeg opens stills as image demuxers (png_pipe, jpeg_pipe, webp_pipe, image2, ...).
    return any(name.endswith("_pipe") or name == "image2" for name in format_name.split(","))


def frames(path: Path) -> Iterator[np.ndarray]:
    """Yield the frames of a video as RGB uint8 arrays [H, W, 3]."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # decode slices on both cores
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as error:
        reason = getattr(error, "strerror", None) or error.__class__.__name__
        raise CorruptVideoError(f"decoding failed part-way ({reason})") from error


def read_chunks(path: Path, chunk_size: int) -> Iterator[list[np.ndarray]]:
    """Yield lists of up to ``chunk_size`` consecutive frames."""
    chunk: list[np.ndarray] = []
    for frame in frames(path):
        chunk.append(frame)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class VideoSink:
    """Write RGB frames to an H.264 MP4, atomically: the file appears at ``path`` only on success.

    >>> with VideoSink(path, fps=30) as sink:
    ...     sink.write(frame)
    """

    def __init__(self, path: Path, fps: float, crf: int = 23, preset: str = "veryfast") -> None:
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.preset = preset
        self.frames_written = 0
        self._atomic = atomic_path(self.path)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None

    def __enter__(self) -> VideoSink:
        partial = self._atomic.__enter__()
        # +faststart puts the index first, so browsers start playing before the download ends.
        self._container = av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"})
        return self

    def write(self, frame: np.ndarray) -> None:
        assert self._container is not None, "use VideoSink as a context manager"
        if self._stream is None:
            self._stream = self._open_stream(frame.shape[1], frame.shape[0])
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def _open_stream(self, width: int, height: int) -> av.VideoStream:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {width}x{height}")
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        stream.thread_type = "AUTO"
        return stream

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._container is not None
        try:
            if exc_type is None and self._stream is not None:
                for packet in self._stream.encode():  # flush the encoder
                    self._container.mux(packet)
        finally:
            self._container.close()
        if exc_type is None and not self.frames_written:
            exc_type, exc = ValueError, ValueError("no frames were written")
            self._atomic.__exit__(exc_type, exc, None)  # an empty video is not a result: no file
            return
        self._atomic.__exit__(exc_type, exc, tb)


class FPSMonitor:
    """Frames per second over a sliding window of recent ticks."""

    def __init__(self, window: int = 60) -> None:
        self._times: list[float] = []
        self._window = window

    def tick(self) -> None:
        self._times.append(time.perf_counter())
        del self._times[: -self._window]

    @property
    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])
