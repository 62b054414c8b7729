from pathlib import Path

import numpy as np
import pytest

from clients.masks import MaskArchiveWriter, read_mask_archive
from clients.video import CorruptVideoError, NotAVideoError, VideoSink, frames, probe, read_chunks


def gradient_frames(count: int, height: int = 64, width: int = 96):
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        frame[..., 1] = (i * 20) % 256
        yield frame


def test_sink_writes_h264_that_decodes_to_the_same_frames(tmp_path: Path):
    path = tmp_path / "out.mp4"
    written = list(gradient_frames(12))
    with VideoSink(path, fps=25) as sink:
        for frame in written:
            sink.write(frame)
    info = probe(path)
    assert (info.width, info.height, info.fps, info.frames) == (96, 64, 25.0, 12)
    decoded = list(frames(path))
    assert len(decoded) == 12
    assert np.abs(decoded[5].astype(int) - written[5].astype(int)).mean() < 4  # lossy, but close
    assert [len(chunk) for chunk in read_chunks(path, 5)] == [5, 5, 2]


def test_sink_leaves_nothing_behind_when_writing_fails(tmp_path: Path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoSink(path, fps=25) as sink:
        sink.write(next(gradient_frames(1)))
        raise RuntimeError("the job failed half-way")
    assert list(tmp_path.iterdir()) == []


def test_odd_frame_sizes_are_refused_with_a_reason(tmp_path: Path):
    with pytest.raises(ValueError, match="even frame sizes"), VideoSink(tmp_path / "o.mp4", fps=25) as sink:
        sink.write(np.zeros((63, 96, 3), np.uint8))


def test_probe_tells_not_a_video_from_a_corrupt_one(tmp_path: Path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(NotAVideoError, match="not a video"):
        probe(text)
    corrupt = tmp_path / "corrupt.mkv"
    write_matroska(corrupt, gradient_frames(10))
    data = bytearray(corrupt.read_bytes())
    data[600:] = np.random.default_rng(0).integers(0, 255, len(data) - 600, dtype=np.uint8).tobytes()
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CorruptVideoError, match="corrupt video"):
        probe(corrupt)


def write_matroska(path: Path, frames_to_write) -> None:
    import av

    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames_to_write:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_mask_archive_round_trips_exactly(tmp_path: Path):
    masks = [np.random.default_rng(i).integers(0, 4, (48, 80), dtype=np.uint8) for i in range(3)]
    with MaskArchiveWriter(tmp_path / "masks.zip") as writer:
        for mask in masks:
            writer.write(mask)
    assert [m.tolist() for m in read_mask_archive(tmp_path / "masks.zip")] == [m.tolist() for m in masks]
    assert [p.name for p in tmp_path.iterdir()] == ["masks.zip"]
