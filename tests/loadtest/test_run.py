"""``python -m loadtest.run``: a real, tiny Locust run against the embedded stack, and a down stack."""

import json
import subprocess
import sys

import pytest

from prodseg.processes import free_port
from tests.triton_statistics import inference_count


def loadtest(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "loadtest.run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.triton
def test_tiny_run_reports_fps_latency_and_tritons_view(tmp_path, triton, gateway):
    result = loadtest(
        "--host",
        gateway.url,
        "--triton-grpc",
        triton.grpc_url,
        "--triton-metrics",
        triton.metrics_url,
        "--prometheus",
        "--steps",
        "1,2",
        "--step-seconds",
        "4",
        "--fps",
        "10",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [step["users"] for step in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["completed"] > 0 and step["failed"] == 0
        assert step["fps_per_user_median"] > 0  # how close to the 10 offered is the benchmarks' business
        assert step["latency_ms_p50"] <= step["latency_ms_p95"] <= step["latency_ms_p99"]
    assert report["triton"]["requests"] >= sum(step["completed"] for step in report["steps"])
    assert report["triton"]["compute_us_per_request"] > 0
    assert (tmp_path / "report.png").stat().st_size > 0
    # a real Prometheus scraped both servers during the run
    assert report["prometheus"]["targets_up"] == 2
    assert report["prometheus"]["triton_queue_us_per_request"] is not None
    assert "cameras sustained at 10 FPS" in result.stdout


@pytest.mark.triton
def test_cameras_with_a_lookahead_send_keyframes_only_and_answer_every_frame(tmp_path, triton, gateway):
    result = loadtest(
        "--host", gateway.url, "--triton-grpc", triton.grpc_url, "--steps", "1", "--step-seconds", "4",
        "--fps", "10", "--reuse", "auto", "--lookahead", "4", "--pan", "6", "--loop-frames", "30",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    wire = report["wire"]
    assert wire["reuse"] == "auto" and wire["lookahead"] == 4
    (step,) = report["steps"]
    assert step["failed"] == 0 and step["completed"] > 0
    # Keyframes at most 5 frames apart: between a sixth and a half of the frames were requests.
    keyframes = wire["frames"] - wire["propagated_frames"]
    assert wire["frames"] / 2 >= keyframes >= wire["frames"] / 6


@pytest.mark.triton
def test_jpeg_cameras_send_a_tenth_of_the_bytes_to_the_model_itself(tmp_path, triton, gateway):
    """On the embedded (CPU) server the model decodes the cameras' JPEGs: no hop through <model>_jpeg."""
    model = "shelf_segmenter"
    before = inference_count(triton.grpc_url, model), inference_count(triton.grpc_url, f"{model}_jpeg")
    result = loadtest(
        "--host", gateway.url, "--triton-grpc", triton.grpc_url, "--model", model, "--steps", "1",
        "--step-seconds", "4", "--fps", "10", "--wire", "jpeg", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    (step,) = report["steps"]
    assert step["failed"] == 0 and step["completed"] > 0
    wire = report["wire"]
    assert (
        wire["bytes_sent_per_frame"] <= 384 * 640 * 3 / 10
        and wire["bytes_received_per_frame"] <= 384 * 640 / 20
    )
    assert inference_count(triton.grpc_url, model) - before[0] >= step["completed"]
    assert inference_count(triton.grpc_url, f"{model}_jpeg") == before[1]


def test_a_down_stack_fails_fast_with_the_reason(tmp_path):
    port = free_port()
    result = loadtest(
        "--host",
        f"http://127.0.0.1:{port}",
        "--triton-grpc",
        f"127.0.0.1:{port}",
        "--out",
        str(tmp_path),
        timeout=60,
    )
    assert result.returncode == 2
    assert f"Triton at 127.0.0.1:{port} is not reachable" in result.stderr
