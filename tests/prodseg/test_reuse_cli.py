"""``prodseg predict`` / ``prodseg stream`` with temporal reuse (``--reuse``), run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.masks import read_mask_archive
from tests.prodseg.test_cli import prodseg


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reuse", "sometimes"], "reuse must be one of off, auto"),
        (["--reuse", "auto", "--max-interval", "0"], "max_interval"),
        (["--reuse", "auto", "--tolerance", "-1"], "tolerance"),
        (["--max-interval", "4"], "only with --reuse auto"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "stream"])
def test_bad_reuse_flags_exit_2_naming_the_flag(tmp_path: Path, shelf_video, command, flags, message):
    output = ["-o", str(tmp_path / "out")] if command == "predict" else []
    result = prodseg(command, str(shelf_video.video), *output, "--triton", "127.0.0.1:9", *flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reuse", "auto", "--lookahead", "-1"], "lookahead must be 0.."),
        (["--lookahead", "3"], "only with --reuse auto"),
    ],
)
def test_bad_lookahead_flags_exit_2_naming_the_flag(shelf_video, flags, message):
    result = prodseg("stream", str(shelf_video.video), "--triton", "127.0.0.1:9", *flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_reuse_on_a_single_image_exits_2(tmp_path: Path):
    image = tmp_path / "in.png"
    image.write_bytes(b"")  # refused before it is read
    result = prodseg("predict", str(image), "-o", str(tmp_path / "out.png"), "--reuse", "auto")
    assert result.returncode == 2 and "applies to videos" in result.stderr


@pytest.mark.triton
def test_predict_a_video_with_reuse_writes_every_frame_and_counts_engine_calls(tmp_path, triton, shelf_video):
    out = tmp_path / "out"
    result = prodseg(
        "predict", str(shelf_video.video), "-o", str(out), "--triton", triton.grpc_url, "--reuse", "auto"
    )
    assert result.returncode == 0, result.stderr
    assert f"engine calls for {shelf_video.frames} frames" in result.stderr
    assert sum(1 for _ in read_mask_archive(out / "masks.zip")) == shelf_video.frames


@pytest.mark.triton
@pytest.mark.parametrize("lookahead", [[], ["--lookahead", "4"]], ids=["forwards", "lookahead"])
def test_stream_with_reuse_reports_engine_calls(tmp_path, triton, shelf_video, lookahead):
    result = prodseg(
        "stream",
        str(shelf_video.video),
        "--triton",
        triton.grpc_url,
        "--fps",
        "15",
        "--reuse",
        "auto",
        "--max-interval",
        "5",
        *lookahead,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["completed"] + stats["dropped"] + stats["failed"] == shelf_video.frames
    assert 0 < stats["engine_calls"] == stats["sent"] < shelf_video.frames / 2
    assert stats["propagated"] + stats["sent"] == stats["completed"]
    assert stats["reuse"]["keyframe_reasons"]
