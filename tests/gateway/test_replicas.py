"""Several Triton replicas behind one gateway: balanced, a replica lost mid-job costs no frame, none
ready means 503 + Retry-After and not ready, and everything recovers when Triton is back. Real
Triton processes are killed by PID."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from clients.masks import read_mask_archive
from prodseg.stack import GatewayProcess, serving_env
from prodseg.triton_server import TritonServer
from tests.conftest import wait_for_job

pytestmark = pytest.mark.triton
MODEL = "shelf_segmenter"


def replica(tmp_path, name: str, **ports) -> TritonServer:
    return TritonServer(models=(MODEL,), log_path=tmp_path / f"{name}.log", **ports).start()


def triton_requests(server: TritonServer) -> float:
    text = httpx.get(server.metrics_url, timeout=5).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and f'model="{MODEL}"' in line
    )


def test_two_replicas_share_the_load_and_a_job_survives_losing_one(tmp_path, shelf_video):
    from datagen.shelves import write_pan_video

    video = tmp_path / "long.mp4"
    write_pan_video(video, tmp_path / "truth.zip", seed=4, num_frames=180, height=384, width=640)
    first, second = replica(tmp_path, "a"), replica(tmp_path, "b")
    gateway = None
    try:
        endpoints = f"{first.grpc_url},{second.grpc_url}"
        env = serving_env(first) | {"PRODSEG_TRITON_GRPC_URL": endpoints}
        gateway = GatewayProcess(endpoints, data_dir=tmp_path / "data", env=env).start()
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            with open(shelf_video.video, "rb") as file:
                job = client.post("/v1/videos", files={"file": ("v.mp4", file)}).json()
            assert wait_for_job(client, job["id"])["status"] == "succeeded"
            assert triton_requests(first) > 0 and triton_requests(second) > 0  # round robin

            with open(video, "rb") as file:
                job = client.post("/v1/videos", files={"file": ("long.mp4", file)}).json()
            deadline = time.monotonic() + 60
            while client.get(job["status_url"]).json()["frames_done"] < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            first.process.send_signal(signal.SIGKILL)  # one replica gone mid-job
            status = wait_for_job(client, job["id"], timeout_s=240)
            assert status["status"] == "succeeded", status["error"]
            masks = tmp_path / "masks.zip"
            masks.write_bytes(client.get(status["artifacts"]["masks.zip"]).content)
            assert sum(1 for _ in read_mask_archive(masks)) == 180  # every frame present
    finally:
        if gateway is not None:
            gateway.stop()
        first.stop()
        second.stop()


def test_no_replica_means_503_and_not_ready_then_recovery_without_restart(tmp_path):
    import cv2
    import numpy as np

    server = replica(tmp_path, "only")
    ports = {
        "http_port": server.http_port,
        "grpc_port": server.grpc_port,
        "metrics_port": server.metrics_port,
    }
    gateway = GatewayProcess(server.grpc_url, data_dir=tmp_path / "data", env=serving_env(server)).start()
    png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            assert client.post("/v1/frames", files={"file": ("a.png", png)}).status_code == 200
            server.stop()
            response = client.post("/v1/frames", files={"file": ("a.png", png)})
            assert response.status_code == 503 and response.headers["retry-after"] == "5"
            assert response.json()["error"]["code"] == "triton_unavailable"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and server.grpc_url in ready.json()["error"]["message"]
            assert client.get("/healthz").status_code == 200
            server = replica(tmp_path, "again", **ports)  # Triton is back on the same address
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert client.post("/v1/frames", files={"file": ("a.png", png)}).status_code == 200
    finally:
        gateway.stop()
        server.stop()
