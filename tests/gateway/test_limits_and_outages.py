"""Gateway behaviour that needs its own settings: upload limits, and Triton being down.

These run the app in-process (Starlette's TestClient drives its lifespan); the Triton-down cases
point the gateway at a loopback port where nothing listens.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from prodseg.processes import free_port
from tests.conftest import wait_for_job


def make_client(tmp_path, triton_url: str, **settings) -> TestClient:
    app = create_app(GatewaySettings(triton_grpc_url=triton_url, data_dir=tmp_path / "data", **settings))
    return TestClient(app)


@pytest.mark.triton
def test_upload_over_the_limit_is_refused_before_it_is_stored(tmp_path, triton, shelf_video):
    limit = 50_000
    assert shelf_video.video.stat().st_size > limit
    with make_client(tmp_path, triton.grpc_url, max_upload_bytes=limit) as client:
        declared = client.post("/v1/videos", files={"file": ("big.mp4", shelf_video.video.read_bytes())})
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "upload_too_large"

        body, content_type = multipart_body(shelf_video.video.read_bytes())

        def chunked():  # no Content-Length: the limit is enforced while the bytes stream in
            for start in range(0, len(body), 16_384):
                yield body[start : start + 16_384]

        streamed = client.post("/v1/videos", content=chunked(), headers={"content-type": content_type})
        assert streamed.status_code == 413
        assert "exceeds the limit of 50000 bytes" in streamed.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
    assert [p for p in (tmp_path / "data" / "jobs").iterdir()] == []


def multipart_body(data: bytes) -> tuple[bytes, str]:
    boundary = "prodsegboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_triton_down_means_not_ready_and_clear_errors(tmp_path, shelf_video):
    with make_client(tmp_path, f"127.0.0.1:{free_port()}") as client:
        assert client.get("/healthz").status_code == 200  # alive: the process is fine
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "triton_not_ready"

        import cv2
        import numpy as np

        _, png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
        frame = client.post("/v1/frames", files={"file": ("a.png", png.tobytes())})
        assert frame.status_code == 503 and frame.headers["retry-after"] == "5"
        assert frame.json()["error"]["code"] == "triton_unavailable"
        assert "127.0.0.1:" in ready.json()["error"]["message"]  # names the endpoint that failed

        job = client.post("/v1/videos", files={"file": ("s.mp4", shelf_video.video.read_bytes())}).json()
        status = wait_for_job(client, job["id"])
        assert status["status"] == "failed"
        assert "Triton" in status["error"]
        overlay = client.get(f"/v1/videos/{job['id']}/overlay.mp4")
        assert client.get("/v1/models").json()["models"][0]["ready"] is False
        assert overlay.status_code == 409 and overlay.json()["error"]["code"] == "job_not_finished"
        # a failed job leaves no upload and no half-written output behind
        assert sorted(p.name for p in (tmp_path / "data" / "jobs" / job["id"]).iterdir()) == []
