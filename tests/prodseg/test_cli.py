"""The ``prodseg`` command line, run as a user runs it (a subprocess), against the real stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clients.masks import decode_mask_png
from clients.video import probe


def prodseg(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prodseg.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    result = prodseg("--help")
    assert result.returncode == 0
    for command in ("serve", "segment", "synth", "model", "demo"):
        assert command in result.stdout


def test_synth_video_writes_video_and_ground_truth(tmp_path: Path):
    result = prodseg("synth", "video", str(tmp_path / "pan.mp4"), "--frames", "6", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert probe(tmp_path / "pan.mp4").frames == 6
    assert (tmp_path / "pan_masks.zip").exists()


def test_segment_a_missing_file_fails_clearly(tmp_path: Path):
    result = prodseg("segment", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "out.mp4"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.triton
def test_segment_rejects_a_non_video_without_writing_output(tmp_path: Path, triton):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    result = prodseg("segment", str(bogus), "-o", str(tmp_path / "out.mp4"), "--triton", triton.grpc_url)
    assert result.returncode == 2
    assert "not a video" in result.stderr
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.triton
def test_segment_video_straight_to_triton(tmp_path: Path, triton, shelf_video):
    out = tmp_path / "overlay.mp4"
    result = prodseg(
        "segment",
        str(shelf_video.video),
        "-o",
        str(out),
        "--masks",
        str(tmp_path / "m.zip"),
        "--triton",
        triton.grpc_url,
    )
    assert result.returncode == 0, result.stderr
    assert probe(out).frames == shelf_video.frames
    assert (tmp_path / "m.zip").exists()


@pytest.mark.triton
def test_segment_image_via_gateway_and_via_triton_agree(tmp_path: Path, triton, gateway, contract):
    import cv2

    from datagen.shelves import render_scene

    image = tmp_path / "shelf.png"
    cv2.imwrite(
        str(image), cv2.cvtColor(render_scene(4, contract.height, contract.width).image, cv2.COLOR_RGB2BGR)
    )
    direct, via_gateway = tmp_path / "direct.png", tmp_path / "gateway.png"
    assert prodseg("segment", str(image), "-o", str(direct), "--triton", triton.grpc_url).returncode == 0
    result = prodseg("segment", str(image), "-o", str(via_gateway), "--gateway", gateway.url)
    assert result.returncode == 0, result.stderr
    assert (decode_mask_png(direct.read_bytes()) == decode_mask_png(via_gateway.read_bytes())).all()


@pytest.mark.triton
def test_gateway_errors_reach_the_user(tmp_path: Path, gateway):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    result = prodseg("segment", str(bogus), "-o", str(tmp_path / "o.mp4"), "--gateway", gateway.url)
    assert result.returncode == 2
    assert "415" in result.stderr and "not_a_video" in result.stderr


def test_model_command_publishes_the_next_version(tmp_path: Path, contract):
    from tests.training.helpers import make_repository

    model_dir = make_repository(tmp_path, size=None) / contract.model_name
    result = prodseg("model", "--steps", "2", "--scenes", "4", "--repository", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "published shelf_segmenter version 1" in result.stderr
    card = (model_dir / "1" / "model_card.json").read_text()
    assert '"steps": 2' in card and '"miou"' in card


@pytest.mark.triton
def test_serve_runs_triton_and_gateway_until_ctrl_c(tmp_path: Path):
    import signal
    import time

    import httpx

    from prodseg.processes import free_port

    ports = {name: free_port() for name in ("http", "grpc", "metrics", "gateway")}
    options = [f"--{name}-port={port}" for name, port in ports.items()]
    command = [sys.executable, "-m", "prodseg.cli", "serve", *options]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{ports['gateway']}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("prodseg serve did not become ready")
        assert httpx.get(f"http://127.0.0.1:{ports['http']}/v2/health/ready").status_code == 200
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
    for port in (ports["http"], ports["gateway"]):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
